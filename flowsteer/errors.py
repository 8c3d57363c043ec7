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

    @classmethod
    def listing(cls, problems: list[str]) -> "ConfigError":
        """One message that lists every problem found (``N problems: a; b; c``)."""
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{len(problems)} problems: " + "; ".join(problems))


class DataError(FlowsteerError):
    """A data set name or file cannot be used."""


class RunFolderError(FlowsteerError):
    """A folder is not a (compatible) flowsteer run."""


class WriteError(FlowsteerError):
    """A file cannot be written: the disk is full or the folder is read-only (the old files are intact)."""


class TrainingStopped(FlowsteerError):
    """Training cannot go on (e.g. too many non-finite steps in a row); the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(FlowsteerError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
