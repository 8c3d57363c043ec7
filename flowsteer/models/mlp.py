"""An MLP velocity field for vectors (2-D toys, tabular data, flattened 8x8 digits)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .protocol import ClassEmbedding, sinusoidal_embedding


class MLPVelocity(nn.Module):
    """``v(t, x, y=None)`` for ``x`` of shape ``[B, *shape]`` (flattened internally).

    Architecture: ``[x, emb(t) (+ emb(y))] -> (Linear, SiLU) x depth -> Linear``,
    the time (and class) embedding is added to every hidden layer.

    Args:
        shape: data shape without the batch dimension, e.g. ``(2,)`` or ``(1, 8, 8)``.
        hidden: hidden width.  depth: number of hidden layers.
        time_dim: size of the sinusoidal time features.
        num_classes: if > 0, the model takes labels ``y`` (``[B]`` long).
    """

    def __init__(
        self, *, shape: tuple[int, ...], hidden: int = 256, depth: int = 3, time_dim: int = 64, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.dim = math.prod(self.shape)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = ClassEmbedding(num_classes, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(self.dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, self.dim)
        self.act = nn.SiLU()

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None, **_: Any) -> Tensor:
        batch = x.shape[0]
        cond = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        if self.class_emb is not None:
            cond = cond + self.class_emb(y, batch, x.device)
        h = self.inp(x.reshape(batch, self.dim)) + cond
        for layer in self.hidden:
            h = layer(self.act(h)) + cond
        return self.out(self.act(h)).reshape(x.shape)
