"""Temperature schedules of gradual fine-tuning (GFT).

A schedule maps a training step to the temperature ``tau`` of the objective
``||v - u||^2 + tau ||v - v_pre||^2``: ``K`` stages of equal length with
``tau_1 > tau_2 > ... > tau_K``, then a final phase at ``tau = 0`` (the target
objective itself).  With ``lambda = 1 / (1 + tau)`` the stage optimum is
``lambda b_q + (1 - lambda) v_pre`` (METHODS.md section 3):

* ``geometric``: ``tau_k = tau0 * r^(k-1)`` with ``r`` chosen so that ``tau_K = tau0 / 100``
  (our choice; the paper's schedule was not available to us);
* ``linear``:    ``lambda_k`` evenly spaced from ``lambda_1 = 1 / (1 + tau0)`` towards 1
  (``lambda_k = lambda_1 + (1 - lambda_1) (k - 1) / K``);
* ``cosine``:    ``lambda_k = 1 - (1 - lambda_1) (1 + cos(pi (k - 1) / K)) / 2``.

``sft`` is the constant ``tau = 0`` (standard fine-tuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import SCHEDULES
from .errors import ConfigError


@dataclass(frozen=True)
class TemperatureSchedule:
    """Piecewise-constant temperature over ``total_steps``.

    Attributes:
        kind: ``geometric``, ``linear``, ``cosine`` or ``constant``.
        tau0: temperature of the first stage.
        stages: number of stages with tau > 0.
        total_steps: length of the run.
        final_fraction: share of the steps spent in the final tau = 0 phase.
    """

    kind: str = "geometric"
    tau0: float = 10.0
    stages: int = 4
    total_steps: int = 2000
    final_fraction: float = 0.25

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError.listing(problems)

    def problems(self) -> list[str]:
        return schedule_problems(self.kind, self.tau0, self.stages, self.total_steps, self.final_fraction)

    @property
    def final_steps(self) -> int:
        return int(round(self.final_fraction * self.total_steps))

    @property
    def stage_steps(self) -> int:
        return (self.total_steps - self.final_steps) // self.stages

    def stage_taus(self) -> list[float]:
        """``[tau_1, ..., tau_K]`` (all > 0, decreasing)."""
        k_all = range(self.stages)
        if self.kind == "constant":
            return [self.tau0] * self.stages
        if self.kind == "geometric":
            ratio = 0.01 ** (1 / max(self.stages - 1, 1)) if self.stages > 1 else 1.0
            return [self.tau0 * ratio**k for k in k_all]
        lam1 = 1 / (1 + self.tau0)
        if self.kind == "linear":
            lams = [lam1 + (1 - lam1) * k / self.stages for k in k_all]
        else:
            lams = [1 - (1 - lam1) * (1 + math.cos(math.pi * k / self.stages)) / 2 for k in k_all]
        return [1 / lam - 1 for lam in lams]

    def __call__(self, step: int) -> float:
        """The temperature at ``step`` (0-based)."""
        if self.kind == "constant":
            return self.tau0
        stage = step // self.stage_steps if self.stage_steps > 0 else self.stages
        return self.stage_taus()[stage] if stage < self.stages else 0.0

    @property
    def reaches_zero(self) -> bool:
        return self.kind != "constant" or self.tau0 == 0


def schedule_problems(kind: str, tau0: float, stages: int, total_steps: int, final_fraction: float) -> list[str]:
    """Every problem with a schedule's settings, one line each (none: the schedule can be built)."""
    p = []
    if kind not in (*SCHEDULES, "constant"):
        p.append(f"--schedule must be one of {', '.join(SCHEDULES)} (got {kind!r})")
    if not (tau0 >= 0 and math.isfinite(tau0)):
        p.append(f"--tau0 must be a finite number >= 0 (got {tau0})")
    if kind != "constant" and not tau0 > 0:
        p.append(f"--tau0 must be > 0 for a {kind} schedule (got {tau0})")
    if not 0 <= final_fraction < 1:
        p.append(f"--final-fraction must be in [0, 1) (got {final_fraction})")
    if stages < 1:
        p.append(f"--stages must be >= 1 (got {stages})")
    elif kind != "constant" and ((total_steps - int(round(final_fraction * total_steps))) // stages) < 1:
        p.append(f"--stages {stages} do not fit in {total_steps} steps with a final phase of "
                 f"{final_fraction:.0%}; use fewer stages or more --steps")
    return p
