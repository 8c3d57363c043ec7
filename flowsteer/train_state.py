"""The Trainer's state beyond the weights: the EMA of the weights and every random-number generator.

A resumed run is bitwise equal to an uninterrupted one because the run's own generator (on the run's
device), torch's CPU and CUDA generators, numpy's and python's are all saved and restored.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .devices import cuda_rng_state
from .models.weights import trainable_state_dict


class EMA:
    """Exponential moving average of a model's trained floating-point tensors (float32 master copies).

    ``ema <- ema + w (theta - ema)`` with ``w = (1 - d_k) ok``, ``d_k = min(decay, (1 + k) / (10 + k))`` and
    ``ok`` the step's on-device "the update was applied" flag, so a skipped step leaves the average alone
    without a host synchronisation.  Only the trained tensors are averaged
    (:func:`~flowsteer.models.weights.trainable_state_dict`: the adapters of a LoRA model, else every
    parameter and buffer); the live tensors are captured once.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        live = trainable_state_dict(model, keep_vars=True)
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        self._float_keys = [k for k, v in live.items() if v.is_floating_point()]
        self._other_keys = [k for k, v in live.items() if not v.is_floating_point()]
        self._live = live
        self._shadow_floats = [self.shadow[k] for k in self._float_keys]
        self._live_floats = [live[k] for k in self._float_keys]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, ok: Tensor | None = None) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        if ok is None:
            torch._foreach_lerp_(self._shadow_floats, self._live_floats, 1.0 - d)
        else:
            delta = torch._foreach_sub(self._live_floats, self._shadow_floats)
            torch._foreach_mul_(delta, ok.to(torch.float32) * (1.0 - d))
            torch._foreach_add_(self._shadow_floats, delta)
        for k in self._other_keys:
            self.shadow[k].copy_(self._live[k])

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The run generator's state and torch's (CPU and CUDA), numpy's and python's global ones."""
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed torch (CPU and CUDA), numpy and python; return the run's own generator on ``device``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the trained tensors' bytes: equal on every rank when gradients were synchronised."""
    h = hashlib.sha256()
    for key, value in sorted(trainable_state_dict(model).items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lr_factor(step: int, *, warmup: int, steps: int, schedule: str = "constant") -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of the base rate.

    Warm-up: ``(step + 1) / warmup`` for ``step < warmup``.  After it, with ``p = (step - warmup) / (steps - warmup)``
    the decayed fraction of the run: ``1`` (constant), ``(1 + cos(pi p)) / 2`` (cosine) or ``1 - p`` (linear), so
    the rate falls to 0 at ``steps``, as in ``transformers.get_cosine_schedule_with_warmup`` and its linear twin.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = 1.0 if step >= steps else (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - p
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """Make ``lr`` the base learning rate of a LambdaLR ``scheduler`` and its ``optimizer`` mid-run.

    The scheduler's step count is kept; with an unchanged ``lr`` the group rates are the very floats a
    checkpoint held (``base_lr * factor(step)``, as LambdaLR computes them).
    """
    k = scheduler.last_epoch
    lrs = [lr * factor(k) for factor in scheduler.lr_lambdas]
    scheduler.base_lrs = [lr] * len(lrs)
    for group, value in zip(optimizer.param_groups, lrs):
        group["lr"], group["initial_lr"] = value, lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step
