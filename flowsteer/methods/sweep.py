"""Sweeps of align's main knob: one run per value into ``OUT/KNOB-V``, then ``sweep.json`` and a Pareto plot.

The knob is the method's own (:data:`~flowsteer.methods.baseline_options.SWEEP_KNOBS`): ``--alpha`` for ORW-CFM-W2
and its baselines (runs in ``OUT/alpha-A``), ``--kl-beta`` for flow-grpo (``OUT/kl-beta-B``) and ``--nft-beta``
for nft (``OUT/nft-beta-B``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..distributed import setup
from ..io import atomic_write_json
from ..ownership import claim_folder
from ..plots import save_pareto
from ..runs import PARETO_PLOT, SWEEP_FILE, Run, read_config
from .baseline_options import knob_flag
from .configs import AlignConfig
from .orw import align


def sweep_run_dir(out: str | Path, value: float, knob: str = "alpha") -> Path:
    """Where a sweep keeps its run for ``knob = value``: ``out/alpha-A``, ``out/kl-beta-B``, ``out/nft-beta-B``."""
    return Path(out) / f"{knob_flag(knob).lstrip('-')}-{value:g}"


def align_sweep(config: AlignConfig, values: list[float], out: str | Path, *, progress: str = "auto",
                knob: str = "alpha") -> dict[str, Any]:
    """Run :func:`~flowsteer.methods.orw.align` once per value of ``knob`` (a field of :class:`AlignConfig`) into
    :func:`sweep_run_dir`; write ``sweep.json`` and ``pareto.png``; returns the summary (empty ``points`` on
    ranks other than 0)."""
    runs = []
    for v in values:
        where = sweep_run_dir(out, v, knob)
        with claim_folder(where, "align", dist=setup()):  # each run is an align run of its own
            runs.append(align(dataclasses.replace(config, **{knob: float(v)}), where, progress=progress))
    if not setup().is_main:
        return {"points": []}
    return write_sweep_summary(out, runs, knob=knob)


def write_sweep_summary(out: str | Path, runs: list[Run | Path], *, knob: str = "alpha") -> dict[str, Any]:
    """Write ``out/sweep.json`` and ``out/pareto.png`` from finished align runs of one base and reward that differ
    in ``knob`` (the runs themselves, or the folders of runs that finished in other processes).  Each point holds
    the knob's value under the knob's name (``alpha``, ``kl_beta``, ``nft_beta``) and the run's ``final``."""
    out = Path(out)
    points, settings = [], {}
    for run in runs:
        config, path = (run.config, run.path) if isinstance(run, Run) else (read_config(run), Path(run))
        settings = config["settings"]
        points.append({knob: float(settings[knob]), "run": str(path), **config["final"]})
    points.sort(key=lambda p: p[knob])
    summary = {"reward": settings.get("reward"), "method": settings.get("method"), "knob": knob,
               "tau": settings.get("tau"), "steps": settings.get("train", {}).get("steps"), "points": points}
    atomic_write_json(out / SWEEP_FILE, summary)
    save_pareto(points, out / PARETO_PLOT, title=f"{summary['method']}: reward vs diversity over {knob}", knob=knob)
    return summary
