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


def _save(fig, path: str | Path) -> None:
    """Lay out, write atomically as PNG, and free the figure.

    ``bbox_inches="tight"`` grows the canvas to whatever is drawn outside the axes (legends placed below
    them, long titles), so no label is cut at the frame.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def _plain_log_axis(axis, ticks: list[float] | None = None) -> None:
    """Plain tick labels on a log axis (``4``, ``50``, ``0.2``; not ``10^0``, ``2x10^-1``).

    ``ticks``: put the major ticks exactly there (e.g. the NFEs that were measured).
    """
    from matplotlib import ticker

    if ticks:
        axis.set_major_locator(ticker.FixedLocator(sorted(set(ticks))))
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _legend_below(ax, n_entries: int) -> None:
    """A legend under the axes, never over the lines: one column per entry up to two, then wrapped."""
    if n_entries:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(2, n_entries), fontsize=8, frameon=False)


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


def save_samples(x: Tensor, path: str | Path, *, title: str | None = None) -> None:
    """Write samples to ``path``: ``.npy`` for the array (data units), ``.csv`` for vectors as text, ``.png`` for a
    picture."""
    if Path(path).suffix.lower() == ".csv":
        from .csv_io import write_csv

        write_csv(torch.as_tensor(x).detach().cpu().numpy(), path)
    elif Path(path).suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, torch.as_tensor(x).detach().cpu().numpy())
    else:
        save_samples_png(x, path, title=title)


GRID_IMAGES = 256  # an image grid shows at most this many samples (16 x 16)


def save_samples_png(x: Tensor, path: str | Path, *, title: str | None = None, reference: Tensor | None = None) -> None:
    """Write samples as an image grid (``[N, C, H, W]``, the first :data:`GRID_IMAGES`) or a scatter plot (``[N, 2]``)."""
    plt = _plt()
    x = torch.as_tensor(x).detach().cpu()
    if x.dim() == 4:
        grid = image_grid(x[:GRID_IMAGES])
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
    _save(fig, path)


def _read_jsonl(path: str | Path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def save_training_curves(metrics_path: str | Path, out: str | Path, *, title: str | None = None) -> None:
    """Reward (train batch and evaluation), class entropy and W2 to the reference over steps."""
    plt = _plt()
    records = _read_jsonl(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = [("reward", "reward"), ("diversity", "class_entropy" if any("class_entropy" in r for r in evals) else "pairwise_distance"),
              ("W2 to reference", "w2_to_reference")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    ax = axes[0]
    if train and "reward" in train[0]:
        ax.plot([r["step"] for r in train], [r["reward"] for r in train], color="tab:gray", lw=1, label="policy batch")
    if evals:
        ax.plot([r["step"] for r in evals], [r["reward_mean"] for r in evals], "o-", color="tab:blue", label="evaluation")
    ax.set_title("reward"), ax.set_xlabel("step")
    _legend_below(ax, len(ax.get_lines()))
    for ax, (label, key) in zip(axes[1:], panels[1:]):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", color="tab:green")
        ax.set_title(f"{label} ({key})"), ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    _save(fig, out)


def save_pareto(points: list[dict], out: str | Path, *, title: str | None = None, extra: list[dict] | None = None,
                knob: str = "alpha") -> None:
    """Reward-diversity plane: one point per value of the swept ``knob`` (alpha, kl_beta, nft_beta; and optional
    extra points, e.g. a W2-budget run)."""
    plt = _plt()
    key = "class_entropy" if all("class_entropy" in p for p in points) else "pairwise_distance"
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    xs, ys = [p[key] for p in points], [p["reward_mean"] for p in points]
    ax.plot(xs, ys, "o-", color="tab:blue", label=f"{knob} sweep")
    for p in points:
        ax.annotate(f"{knob}={p[knob]:g}", (p[key], p["reward_mean"]), textcoords="offset points", xytext=(5, 5))
    for p in extra or []:
        ax.plot([p[key]], [p["reward_mean"]], "*", ms=14, color="tab:red", label=p.get("label", "extra"))
    ax.set_xlabel(key.replace("_", " ")), ax.set_ylabel("reward (mean)")
    ax.margins(0.15)  # room for the knob's labels inside the frame
    _legend_below(ax, len(ax.get_lines()) if extra else 0)
    if title:
        ax.set_title(title)
    _save(fig, out)


NFE_FIGURE_TITLES = {"w2_to_target": "W2 to held-out target", "fd_to_target": "Frechet distance (features)"}


def _nfe_keys(record: dict, prefix: str) -> list[tuple[int, str]]:
    keys = [(int(k[len(prefix):]), k) for k in record if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return sorted(keys)


def save_metric_vs_step(history: list[dict], out: str | Path, *, title: str | None = None,
                        metrics: tuple[str, ...] = ("w2_to_target", "fd_to_target")) -> None:
    """One panel per figure measured per NFE (``w2_to_target_nfe*``, ``fd_to_target_nfe*``): value against
    training step, one line per NFE."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), dpi=100, squeeze=False)
    for ax, family in zip(axes[0], metrics):
        if history:
            for nfe, key in _nfe_keys(history[-1], f"{family}_nfe"):
                pts = [(h["step"], h[key]) for h in history if key in h]
                ax.plot(*zip(*pts), "o-", ms=3, label=f"NFE {nfe}")
            _legend_below(ax, len(ax.get_lines()))
        ax.set_title(NFE_FIGURE_TITLES.get(family, family)), ax.set_xlabel("step"), ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    if title:
        fig.suptitle(title)
    _save(fig, out)


def save_metric_vs_nfe(finals: dict[str, dict], out: str | Path, *, title: str | None = None,
                       metrics: tuple[str, ...] = ("w2_to_target", "fd_to_target")) -> None:
    """Final ``w2_to_target_nfe*`` / ``fd_to_target_nfe*`` against the number of Euler steps, one line per run
    (label -> metrics)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), dpi=100, squeeze=False)
    for ax, family in zip(axes[0], metrics):
        nfes: list[float] = []
        for label, final in finals.items():
            pts = [(nfe, final[key]) for nfe, key in _nfe_keys(final, f"{family}_nfe")]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=4, label=label)
                nfes += [nfe for nfe, _ in pts]
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("NFE (Euler steps)")
        _plain_log_axis(ax.xaxis, nfes), _plain_log_axis(ax.yaxis)
        ax.set_title(NFE_FIGURE_TITLES.get(family, family))
        _legend_below(ax, len(ax.get_lines()))
    if title:
        fig.suptitle(title)
    _save(fig, out)


def save_panels(panels: list[tuple[str, Tensor]], path: str | Path, *, title: str | None = None,
                n_images: int = 64) -> None:
    """Sample sets side by side, one panel each: image grids (``[N, C, H, W]``) or 2-D scatters (``[N, 2]``).

    ``panels`` is a list of ``(caption, samples)``; all scatters share their axis limits.
    """
    import textwrap

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.3), dpi=100, squeeze=False)
    points = [torch.as_tensor(x).detach().cpu() for _, x in panels]
    if all(p.dim() == 2 and p.shape[1] == 2 for p in points):
        allp = torch.cat(points)
        lo, hi = allp.quantile(0.002, dim=0), allp.quantile(0.998, dim=0)
        pad = 0.08 * (hi - lo)
    for ax, (caption, _), x in zip(axes[0], panels, points):
        if x.dim() == 4:
            grid = image_grid(x[:n_images])
            ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.axis("off")
        elif x.dim() == 2 and x.shape[1] == 2:
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, c="tab:blue")
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0]), ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_aspect("equal")
        else:
            raise ConfigError(f"a PNG needs images or 2-D points, but samples have shape {tuple(x.shape[1:])}")
        ax.set_title("\n".join(textwrap.wrap(caption, 38)), fontsize=9)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def save_loss_curve(metrics_path: str | Path, out: str | Path, *, title: str | None = None) -> None:
    """Training loss (the logged running mean) against step."""
    plt = _plt()
    train = [r for r in _read_jsonl(metrics_path) if r.get("kind") == "train" and "loss" in r]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_title(title or "training loss")
    _save(fig, out)


def save_curves_vs_nfe(series: dict[str, dict[int, float]], out: str | Path, *, ylabel: str,
                       title: str | None = None, log_y: bool = False) -> None:
    """One line per label: a metric against the number of solver steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for label, values in series.items():
        pts = sorted(values.items())
        ax.plot([k for k, _ in pts], [v for _, v in pts], "o-", ms=4, label=label)
    ax.set_xscale("log"), ax.set_xlabel("NFE (solver steps)"), ax.set_ylabel(ylabel)
    _plain_log_axis(ax.xaxis, [k for values in series.values() for k in values])
    if log_y:
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    _legend_below(ax, len(series))
    ax.set_title(title or f"{ylabel} vs NFE")
    _save(fig, out)


def save_class_histograms(histograms: list[tuple[str, list[float]]], path: str | Path, *,
                          highlight: set[int] | None = None) -> None:
    """Bar charts of the share of samples per predicted class, one panel per run, side by side.

    ``histograms``: ``(caption, shares)`` with ``shares[c]`` the fraction of samples classified as ``c``.
    ``highlight``: classes drawn in the accent colour (e.g. the rewarded ones); the rest in grey.
    """
    import textwrap

    plt = _plt()
    fig, axes = plt.subplots(1, len(histograms), figsize=(2.6 * len(histograms), 2.6), dpi=100, squeeze=False,
                             sharey=True)
    for ax, (caption, shares) in zip(axes[0], histograms):
        classes = list(range(len(shares)))
        colours = ["tab:blue" if highlight is None or c in highlight else "tab:gray" for c in classes]
        ax.bar(classes, shares, color=colours)
        ax.set_xticks(classes), ax.set_ylim(0, 1), ax.set_xlabel("class")
        ax.set_title("\n".join(textwrap.wrap(caption, 30)), fontsize=8)
    axes[0][0].set_ylabel("share of samples")
    _save(fig, path)
