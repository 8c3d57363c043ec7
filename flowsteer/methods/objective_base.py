"""What every align objective holds (ORW and its baselines, Flow-GRPO, NFT), set up in one place."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .budget import Budget
from .configs import AlignConfig


class AlignObjectiveBase:
    """The frozen reference, the reward, the settings and where the objective computes.

    ``device``: where rollouts, rewards' inputs and running statistics live (default: the generator's);
    statistics are float64 there, float32 on MPS (which has no float64).  ``budget``: the run's reward calls and
    model evaluations (:mod:`.budget`), counted by each method where it spends them.

    Every align method marks its rollouts and reward calls as interruptible regions (``interruptible = True``,
    :mod:`flowsteer.interrupts`): they change nothing but the RNG (and the budget's counts, which count work
    spent), so a stop signal during a slow reward abandons the step and the Trainer rewinds the RNG to its start.
    """

    interruptible = True

    def __init__(self, *, reference: nn.Module, reward: Any, config: AlignConfig, decode, shape: tuple[int, ...],
                 sigma: float, num_classes: int = 0, generator: torch.Generator, condition=None,
                 device: torch.device | None = None) -> None:
        self.reference, self.reward, self.cfg = reference, reward, config
        self.device = torch.device(device or generator.device)
        self.stat_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.decode, self.shape, self.sigma, self.num_classes = decode, shape, sigma, num_classes
        self.condition = condition
        self.bad_total = 0
        self.w2_running: Tensor | None = None
        self.budget = Budget()
        self.budget.start(self.device)  # from here: RWR's fixed sample set, made below by its objective, is training
        for p in reference.parameters():
            p.requires_grad_(False)
