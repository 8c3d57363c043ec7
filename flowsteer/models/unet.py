"""A compact UNet velocity field for small images (8x8 to 32x32)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .protocol import ClassEmbedding, sinusoidal_embedding


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice; the conditioning vector adds a per-channel shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNetVelocity(nn.Module):
    """``v(t, x, y=None)`` for images ``x`` of shape ``[B, C, H, W]``.

    One :class:`ResBlock` per level on the way down and two on the way up
    (with skip connections), stride-2 down-sampling, nearest up-sampling.

    Args:
        shape: ``(C, H, W)``; H and W must be divisible by ``2**(len(channel_mult) - 1)``.
        base_channels: channels at full resolution.
        channel_mult: channel multiplier per level, e.g. ``(1, 2)`` for 8x8, ``(1, 2, 2)`` for 32x32.
        num_classes: if > 0, the model takes labels ``y`` (``[B]`` long).
    """

    def __init__(
        self,
        *,
        shape: tuple[int, int, int],
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2),
        time_dim: int = 64,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"UNetVelocity needs shape (C, H, W), got {shape}")
        c, h, w = shape
        factor = 2 ** (len(channel_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"image size {h}x{w} is not divisible by {factor} (from channel_mult={channel_mult})")
        self.shape = tuple(shape)
        self.time_dim = time_dim
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = ClassEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        chans = [base_channels * m for m in channel_mult]
        self.inp = nn.Conv2d(c, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(ResBlock(prev, ch, emb_dim))
            prev = ch
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(prev, prev, emb_dim)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(ResBlock(prev + ch, ch, emb_dim))
            prev = ch
        self.out_norm = nn.GroupNorm(_groups(prev), prev)
        self.out = nn.Conv2d(prev, c, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None, **_: Any) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        if self.class_emb is not None:
            emb = emb + self.class_emb(y, x.shape[0], x.device)
        h = self.inp(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
