"""A reward on some modes of the 8-Gaussian mixture (ORW's "recover all rewarded modes" experiment, issue 20).

The ``8gaussians`` toy (:func:`flowsteer.data.make_toy`) puts mode ``k`` at ``2 (cos(k pi/4), sin(k pi/4))``
with std 0.2.  ``gaussian-modes:0,3,5`` rewards modes 0, 3 and 5 with a smooth bump on each,

    r(x) = max_{k in modes} exp(-||x - c_k||^2 / (2 w^2)),    w = 0.5,

in [0, 1]: 1 at a rewarded centre, about 0.92 one mode-std away, and about 0.009 at the neighbouring
(unrewarded) modes 1.53 away.  :func:`mode_shares` assigns samples to their nearest of the 8 centres.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

N_MODES, RADIUS, BUMP_WIDTH = 8, 2.0, 0.5
DEFAULT_MODES = (0, 3, 5)


def mode_centres(device: torch.device | str | None = None) -> Tensor:
    """The 8 centres ``[8, 2]`` of the ``8gaussians`` toy, mode k at angle k pi / 4."""
    angles = torch.arange(N_MODES, dtype=torch.float32, device=device) * (2 * math.pi / N_MODES)
    return RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def mode_shares(x: Tensor) -> Tensor:
    """Share ``[8]`` of the points ``x`` ``[N, 2]`` whose nearest centre is each mode."""
    nearest = torch.cdist(x.float(), mode_centres(x.device)).argmin(dim=1)
    return torch.bincount(nearest, minlength=N_MODES).float() / max(x.shape[0], 1)


class ModeReward:
    """``r(x) = max_k exp(-||x - c_k||^2 / (2 w^2))`` over the rewarded modes ``k`` (see the module doc)."""

    def __init__(self, modes: tuple[int, ...] = DEFAULT_MODES, width: float = BUMP_WIDTH) -> None:
        if not modes or any(not 0 <= m < N_MODES for m in modes):
            raise ValueError(f"modes must be among 0..{N_MODES - 1}, got {modes}")
        self.modes, self.width = tuple(sorted(set(int(m) for m in modes))), float(width)
        self.name = f"gaussian-modes:{','.join(map(str, self.modes))}"

    def __call__(self, x: Tensor, **_: Any) -> Tensor:
        from .protocol import RewardError

        if x.dim() != 2 or x.shape[1] != 2:
            raise RewardError(f"reward {self.name!r} needs 2-D points [B, 2], got shape {tuple(x.shape)}")
        centres = mode_centres(x.device)[list(self.modes)]
        d2 = torch.cdist(x.float(), centres) ** 2
        return torch.exp(-d2 / (2 * self.width**2)).amax(dim=1)

    def held(self, x: Tensor, *, share: float = 0.1) -> int:
        """How many rewarded modes hold at least ``share`` of the samples (nearest-centre assignment)."""
        shares = mode_shares(x)
        return int(sum(float(shares[m]) >= share for m in self.modes))
