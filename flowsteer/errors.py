"""User-facing errors.

A :class:`FlowsteerError` is a problem with the user's input (a flag, a file, a
run folder).  The CLI prints its message on one line and exits with status 2,
without a traceback.  Messages name the problem *and* the fix.
"""

from __future__ import annotations


class FlowsteerError(Exception):
    """Bad input: printed as one line by the CLI, never as a traceback."""


class ConfigError(FlowsteerError):
    """An option has a wrong type, range or combination."""


class DataError(FlowsteerError):
    """A data set name or file cannot be used."""


class RunFolderError(FlowsteerError):
    """A folder is not a (compatible) flowsteer run."""
