"""The P(even) / class-entropy frontier of the even-digit benchmarks: the KL-regularised optimum and the trained runs.

The optimum ``q0 exp(r / beta)`` is predicted from the base's own samples (:func:`flowsteer.tilt.predict_tilt`) for
a grid of beta, once with the reward the runs train on (``r = P(even)``) and once with its log
(``r = log P(even)``, where beta = 1 is the base conditioned on the classifier's "even").  Each trained run is a
point.  The plot shows how far the optimum itself reaches into the target corner (P(even) >= 0.99 with entropy >=
1.55) and how far the trained models fall short of it.

Used by ``even_digits.py`` and ``mnist_paper.py`` (this folder is on their ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EVEN = (0, 2, 4, 6, 8)
SOFT_BETAS = tuple(float(b) for b in np.geomspace(1.0, 0.002, 28))  # r = P(even) in [0, 1]
LOG_BETAS = tuple(float(b) for b in np.geomspace(4.0, 0.01, 28))  # r = log P(even) <= 0


def optimum_curves(even_probability, labels) -> dict[str, list[dict]]:
    """The predicted optimum for each beta of both grids: ``{"P(even)": [...], "log P(even)": [...]}``, each item
    ``{"beta", "even_share", "class_entropy", "effective_samples"}``.  ``even_probability``: the reward
    classifier's P(even) of the base's samples ``[n]``; ``labels``: the classes the figures are measured with
    ``[n]`` (the judge's, where there is one)."""
    import torch

    from flowsteer.tilt import predict_tilt

    p = torch.as_tensor(np.asarray(even_probability, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels)).long()
    log_p = torch.log(p.clamp_min(1e-300))
    curves = {}
    for name, rewards, betas in (("P(even)", p, SOFT_BETAS), ("log P(even)", log_p, LOG_BETAS)):
        rows = []
        for beta in betas:
            t = predict_tilt(rewards, labels, beta=beta, num_classes=10, rewarded=EVEN)
            rows.append({"beta": beta, "even_share": t.rewarded_share, "class_entropy": t.class_entropy,
                         "effective_samples": t.effective_samples})
        curves[name] = rows
    return curves


def save_frontier_plot(path: Path, curves: dict[str, list[dict]], points: dict[str, tuple[float, float]], *,
                       title: str, bar: tuple[float, float] = (0.99, 1.55),
                       groups: dict[str, str] | None = None) -> None:
    """Entropy against P(even): the optimum's curves, the runs and the target corner; the right panel zooms on the
    corner.  A run named in ``groups`` is drawn as its group's marker (one legend entry per group), the others
    with their own label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = groups or {}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100)
    markers = dict(zip(sorted(set(groups.values())), "sD^vP*Xhp<>"))
    for ax, (xlim, ylim) in zip(axes, (((0.85, 1.002), (1.0, 2.1)), ((0.96, 1.001), (1.1, 1.8)))):
        for (name, rows), style in zip(curves.items(), ("-", "--")):
            ax.plot([r["even_share"] for r in rows], [r["class_entropy"] for r in rows], style, color="gray",
                    label=f"optimum q0 exp(r/beta), r = {name}")
        ax.fill_between([bar[0], 1.0], bar[1], ylim[1], color="green", alpha=0.08,
                        label=f"target: P(even) >= {bar[0]}, entropy >= {bar[1]}")
        seen: set[str] = set()
        for label, (p_even, h) in points.items():
            group = groups.get(label)
            if group is None:
                ax.plot(p_even, h, "o", ms=5, color="black")
                ax.annotate(label, (p_even, h), textcoords="offset points", xytext=(4, 3), fontsize=7)
            else:
                ax.plot(p_even, h, markers[group], ms=6, alpha=0.8, color=f"C{sorted(markers).index(group)}",
                        label=None if group in seen else group)
                seen.add(group)
        ax.set_xlim(*xlim)  # runs outside (alpha = 0's collapse, alpha = 1) are in the tables, not here
        ax.set_ylim(*ylim)
        ax.set_xlabel("P(even)")
        ax.set_ylabel("class entropy (nats)")
    axes[0].set_title(title, fontsize=10)
    axes[1].set_title("the target corner", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
