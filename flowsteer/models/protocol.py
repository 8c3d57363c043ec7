"""The model protocol: ``v = model(t, x, **cond)``.

``t`` has shape ``[B]`` (floats in [0, 1]), ``x`` has shape ``[B, *D]`` and
the output has the shape of ``x``.  Conditions are keyword tensors, e.g.
``y`` (``[B]`` long class labels).  Models written the other way round,
``model(x, t)``, are wrapped by :class:`XTModel`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class VelocityModel(Protocol):
    def __call__(self, t: Tensor, x: Tensor, **cond: Any) -> Tensor:
        ...


class XTModel(nn.Module):
    """Adapt a module called as ``module(x, t, *cond)`` to ``model(t, x, **cond)``.

    Args:
        module: the wrapped network.
        time_scale: multiply t before passing it on (e.g. 1000 for models
            trained on integer diffusion timesteps).
        cond_keys: condition names passed positionally after ``t``, in order.
    """

    def __init__(self, module: nn.Module, *, time_scale: float = 1.0, cond_keys: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.module = module
        self.time_scale = float(time_scale)
        self.cond_keys = tuple(cond_keys)

    def forward(self, t: Tensor, x: Tensor, **cond: Any) -> Tensor:
        extra = [cond[k] for k in self.cond_keys if k in cond]
        return self.module(x, t * self.time_scale, *extra)


def sinusoidal_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style features of ``t`` (``[B]`` -> ``[B, dim]``), t scaled by 1000."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period, device=t.device)) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ClassEmbedding(nn.Module):
    """Label embedding with one extra "null" class (index ``num_classes``) for unconditional use."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.long())
