"""What the group-relative baselines (Flow-GRPO, DiffusionNFT) share: grouped conditions, scored rollouts,
group-standardised advantages, and the figures ``align`` reads at the end.

Groups: ``--group-size G`` consecutive samples of a batch share a condition (a class label of a
class-conditional base); where there is no label to share (an unconditional base, or one prompt for the whole
batch) the whole batch is one group.  Advantages are standardised within a group,
``A_i = (r_i - mean_g) / (std_g + 1e-4)`` (population std, as Flow-GRPO's stat tracker), clipped to
``[-5, 5]``; a group whose rewards are all equal gives ``A = 0`` (never NaN), and so does a sample whose reward
is not finite (skipped with ``--on-bad-reward skip``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .objective_base import AlignObjectiveBase
from ..rewards import RewardError, score
from ..rewards.protocol import reward_name
from .configs import AlignConfig

ADV_CLIP = 5.0  # Flow-GRPO's and DiffusionNFT's adv_clip_max


def group_advantages(r: Tensor, valid: Tensor, group_size: int, *, eps: float = 1e-4) -> Tensor:
    """Advantages ``[B]`` of rewards ``r`` ``[B]`` standardised within consecutive groups of ``group_size``.

    Only valid entries count towards a group's mean and std and only they get a non-zero advantage; a group
    whose valid rewards are all equal (or that has fewer than two) gets zeros.  Computed in ``r``'s dtype.
    """
    if r.numel() % group_size:
        raise ValueError(f"a batch of {r.numel()} does not split into groups of {group_size}")
    rg, vg = r.reshape(-1, group_size), valid.reshape(-1, group_size)
    z = torch.where(vg, rg, torch.zeros_like(rg))
    n = vg.sum(1, keepdim=True).clamp_min(1).to(r.dtype)
    mean = z.sum(1, keepdim=True) / n
    centred = torch.where(vg, rg - mean, torch.zeros_like(rg))
    std = torch.sqrt((centred**2).sum(1, keepdim=True) / n)
    big = torch.finfo(r.dtype).max
    spread = torch.where(vg, rg, torch.full_like(rg, -big)).amax(1, keepdim=True) - \
        torch.where(vg, rg, torch.full_like(rg, big)).amin(1, keepdim=True)
    live = vg & (spread > 0) & (vg.sum(1, keepdim=True) > 1)
    adv = torch.where(live, centred / (std + eps), torch.zeros_like(rg))
    return adv.clamp(-ADV_CLIP, ADV_CLIP).reshape(r.shape)


class GroupedOnlineObjective(AlignObjectiveBase):
    """The shared half of an online group-relative method: conditions, scoring and bookkeeping.

    Subclasses implement ``loss(model, *, step, generator)`` and extend ``state_dict``/``load_state_dict``.
    The constructor takes the same arguments as :class:`~flowsteer.methods.orw.RewardWeightedObjective`.
    """

    def __init__(self, *, reference: nn.Module, reward: Any, config: AlignConfig, decode, shape: tuple[int, ...],
                 sigma: float, num_classes: int = 0, generator: torch.Generator, condition=None,
                 device: torch.device | None = None) -> None:
        super().__init__(reference=reference, reward=reward, config=config, decode=decode, shape=shape, sigma=sigma,
                         num_classes=num_classes, generator=generator, condition=condition, device=device)
        # w2_running stays None: align's final figures read it, and these methods keep no W2 term
        b = config.train.batch_size
        self.group = config.group_size if num_classes else b
        if b % self.group:
            raise ConfigError(f"--group-size {config.group_size} does not divide this process's batch of {b}; "
                              "choose a group size that divides --batch-size / processes")

    def labels(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Conditions of ``n`` samples: one class label per group of ``--group-size`` (and a prompt's states)."""
        cond = dict(self.condition(n)) if self.condition is not None else {}
        if self.num_classes:
            y = torch.randint(0, self.num_classes, (n // self.group,), generator=generator, device=self.device)
            cond["y"] = y.repeat_interleave(self.group)
        return cond

    def rewards(self, x1: Tensor, cond: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor]:
        """Rewards ``[B]`` (float64; float32 on MPS) and their validity; stops (or skips) on non-finite ones."""
        r = score(self.reward, self.decode(x1), cond, timeout=self.cfg.reward_timeout, step=step)  # interruptible
        self.budget.scored(x1.shape[0])
        valid = torch.isfinite(r)
        n_bad = int((~valid).sum())
        if n_bad:
            if self.cfg.on_bad_reward == "stop" or n_bad == r.numel():
                raise RewardError(
                    f"reward {reward_name(self.reward)!r} returned NaN or inf for {n_bad} of {r.numel()} samples at "
                    f"step {step}; fix the reward, or pass --on-bad-reward skip to drop such samples")
            self.bad_total += n_bad
        return r.to(self.stat_dtype), valid

    def advantages(self, r: Tensor, valid: Tensor) -> Tensor:
        return group_advantages(r, valid, self.group)

    def reward_metrics(self, r: Tensor, valid: Tensor) -> dict[str, Tensor | float]:
        rv = r[valid]
        return {"reward": rv.mean(), "reward_std": rv.std() if rv.numel() > 1 else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"bad_total": self.bad_total, "budget": self.budget.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_total = state["bad_total"]
        self.budget.load_state_dict(state.get("budget"))
