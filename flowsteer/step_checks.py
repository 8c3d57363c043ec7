"""The Trainer's bad-step bookkeeping: non-finite (skipped) steps and divergence, read on the host in batches.

Each step leaves ``[loss, grad norm, monitor]`` on the device; :meth:`StepChecks.settle` reads the pending
ones in one synchronisation (at log, evaluation and checkpoint steps; every step on the CPU).

* A step whose loss or gradient is not finite was skipped by the Trainer (no update): it is counted and
  logged (``kind = "skip"``).
* A finite step has diverged when its ``monitor`` (the loss, or the objective's scale-free stand-in, see
  :class:`~flowsteer.training.StepOutput`) is above ``DIVERGENCE_FACTOR`` (10^4) times the run's first
  finite one; it is logged (``kind = "diverging"``).  A healthy flow-matching loss starts near its
  largest value (the conditional variance of the paths), so the factor leaves ample room; an explosion
  (e.g. ``align --lr 10``: 10^10 times) crosses it in a few steps.  The starting value is checkpointed.

``max_bad_steps`` bad steps (of either kind) in a row raise :class:`~flowsteer.errors.TrainingStopped`
(exit 3); the last checkpoint is kept.  Under several processes the Trainer averages the monitor over the ranks
(on the device), so every rank reaches the same verdict and they stop together.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .errors import TrainingStopped

DIVERGENCE_FACTOR = 1e4  # a loss this many times the run's first finite loss counts as a diverged step
ADVICE = "the last checkpoint is kept - lower --lr, check the data or reward for extreme values, or raise --max-bad-steps"


class StepChecks:
    """Pending step flags and the counts read from them.

    Args:
        max_bad_steps: bad steps in a row that stop the run.  scaled: fp16 with a gradient scaler (an
            overflowing gradient is then the scaler's business, not a bad step).
    """

    def __init__(self, max_bad_steps: int, *, scaled: bool = False) -> None:
        self.max_bad_steps, self.scaled = max_bad_steps, scaled
        self.pending: list[tuple[int, Tensor]] = []  # (step, [loss, grad norm, monitor]) not yet read on the host
        self.skipped = 0
        self.in_row = 0
        self.loss_start: float | None = None

    def add(self, step: int, loss: Tensor, grad_norm: Tensor, monitor: Tensor) -> None:
        self.pending.append((step, torch.stack([loss.detach(), grad_norm.detach().float(), monitor.detach().float()])))

    def settle(self, log: Callable[[dict[str, Any]], None] | None, progress: Any) -> None:
        """Read the pending steps (one sync): log skipped and diverging steps, stop after too many in a row."""
        if not self.pending:
            return
        values = torch.stack([v for _, v in self.pending]).cpu().tolist()
        steps = [k for k, _ in self.pending]
        self.pending = []
        for step, (loss, norm, monitor) in zip(steps, values):
            if math.isfinite(loss) and (math.isfinite(norm) or self.scaled):
                self._finite(step, monitor, log)
                continue
            reason = f"non-finite loss ({loss})" if not math.isfinite(loss) else f"non-finite gradient (norm {norm})"
            self.in_row += 1
            self.skipped += 1
            if log is not None:
                log({"step": step, "kind": "skip", "reason": reason, "in_a_row": self.in_row})
            if progress is not None:
                progress.message(f"step {step}: skipped ({reason}); {self.in_row} in a row")
            if self.in_row >= self.max_bad_steps:
                raise TrainingStopped(f"stopped at step {step}: {self.in_row} non-finite steps in a row ({reason}); "
                                      + ADVICE)

    def _finite(self, step: int, monitor: float, log: Callable[[dict[str, Any]], None] | None) -> None:
        if not math.isfinite(monitor):  # the stand-in overflowed while the loss did not: diverged as well
            monitor = math.inf
        if self.loss_start is None:
            self.loss_start = monitor
        if monitor <= DIVERGENCE_FACTOR * max(abs(self.loss_start), 1e-6):
            self.in_row = 0
            return
        self.in_row += 1
        if log is not None:
            log({"step": step, "kind": "diverging", "loss": monitor, "start_loss": self.loss_start,
                 "in_a_row": self.in_row})
        if self.in_row >= self.max_bad_steps:
            raise TrainingStopped(
                f"stopped at step {step}: the loss diverged ({monitor:.3g}, over {DIVERGENCE_FACTOR:g} times its first "
                f"value {self.loss_start:.3g}, for {self.in_row} steps in a row); " + ADVICE)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped, "bad_in_row": self.in_row, "loss_start": self.loss_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped_steps", 0))
        self.in_row = int(state.get("bad_in_row", 0))
        self.loss_start = state.get("loss_start")
