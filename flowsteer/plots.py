"""PNG outputs: image grids and 2-D scatter plots (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def image_grid(x: Tensor | np.ndarray, *, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``[N, C, H, W]`` in [-1, 1] into one ``[H', W', C]`` array in [0, 1]."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    n, c, h, w = arr.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.float32)
    arr = np.clip((arr + 1) / 2, 0, 1).transpose(0, 2, 3, 1)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    return grid


def save_samples_png(x: Tensor, path: str | Path, *, title: str | None = None, reference: Tensor | None = None) -> None:
    """Write samples as an image grid (``[N, C, H, W]``) or a scatter plot (``[N, 2]``)."""
    plt = _plt()
    x = torch.as_tensor(x).detach().cpu()
    if x.dim() == 4:
        grid = image_grid(x[:256])
        fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    elif x.dim() == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        if reference is not None:
            ref = torch.as_tensor(reference).cpu()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
        ax.set_aspect("equal")
        if reference is not None:
            ax.legend(loc="upper right", markerscale=4)
    else:
        raise ConfigError(f"a PNG needs images or 2-D points, but samples have shape {tuple(x.shape[1:])}; write .npy instead")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
