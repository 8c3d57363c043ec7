"""Prompt stops on SIGINT / SIGTERM: interruptible regions and the second signal.

:class:`~flowsteer.training.Trainer` installs a :class:`StopSignals` for the life of ``fit`` (main thread
only).  What a signal does depends on where it lands:

* the first signal sets a flag.  The loop finishes the current step, checkpoints and stops (exit 128 +
  signal).  When the signal lands inside an :func:`interruptible` region that the Trainer has armed
  (a reward call, a rollout, an evaluation's sampling), the handler raises :class:`StepInterrupted` there
  and then: the region is cut short, the step is abandoned (the Trainer rewinds the RNG to the step's
  start; a region changes nothing else) and the checkpoint holds the last completed step.  A region that
  swallows the exception (``except BaseException``) is stopped again as soon as it returns;
* a second signal raises :class:`Abort` wherever it lands: the process exits at once (130 / 143) without
  a new checkpoint.  Checkpoints are written under a temporary name and renamed, so the last one is
  intact whatever the moment.

Regions raise only when armed: the Trainer arms them in the steps of objectives that declare
``interruptible = True`` (ORW's rollouts and rewards) and in evaluations, and never under several
processes (a rank that stopped alone would leave the others waiting in a collective).  Outside a
Trainer, :func:`interruptible` does nothing.  Both exceptions derive from ``BaseException``, so a
reward's ``except Exception`` cannot swallow them.  A region wraps the slow call alone, never set-up or
clean-up code: the first signal raises only while a region is open, so restoring a timer, file descriptors
or swapped weights around it always completes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["Abort", "StepInterrupted", "StopSignals", "interruptible"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepInterrupted(BaseException):
    """A first stop signal inside an armed :func:`interruptible` region: abandon the step, checkpoint, stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Abort(KeyboardInterrupt):
    """A second stop signal: exit at once (status 128 + signal), without writing a checkpoint."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted again by {name} while stopping; exited at once without a new checkpoint - any "
                         "checkpoint written before is kept: run the same command with --resume to continue from it")
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """The handler of SIGINT and SIGTERM while a Trainer runs (see the module doc).

    Attributes:
        received: the first signal's number (0: none yet).
        armed: whether :func:`interruptible` regions raise now.
    """

    def __init__(self) -> None:
        self.received = 0
        self.armed = False
        self.depth = 0
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, _frame: Any) -> None:
        if self.received:
            signal.setitimer(signal.ITIMER_REAL, 0)  # a reward's --reward-timeout alarm must not fire while exiting
            raise Abort(signum)
        self.received = signum
        if self.armed and self.depth:
            raise StepInterrupted(signum)

    def install(self) -> bool:
        """Take over SIGINT and SIGTERM (main thread only; elsewhere nothing changes and False is returned)."""
        global _ACTIVE
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self.handle)
        _ACTIVE = self
        return True

    def uninstall(self) -> None:
        """Give SIGINT and SIGTERM back to their previous handlers."""
        global _ACTIVE
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if _ACTIVE is self:
            _ACTIVE = None


_ACTIVE: StopSignals | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Mark a region that a stop signal may cut short (see the module doc).

    Only code that leaves the run's state as it was when cut anywhere belongs in one: a reward call on a
    copy of the samples, a rollout (inside, never around, a swap of weights).
    """
    stops = _ACTIVE
    if stops is None:
        yield
        return
    if stops.armed and stops.received:
        raise StepInterrupted(stops.received)
    stops.depth += 1
    try:
        yield
    finally:
        stops.depth -= 1
    if stops.armed and stops.received:  # the region swallowed the interruption: stop now that it is back
        raise StepInterrupted(stops.received)
