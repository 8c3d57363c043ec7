"""Sweeps of align's main knob: one run per value into ``OUT/alpha-A``, then ``sweep.json`` and a Pareto plot."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..distributed import setup
from ..io import atomic_write_json
from ..ownership import claim_folder
from ..plots import save_pareto
from ..runs import PARETO_PLOT, SWEEP_FILE, Run, read_config
from .configs import AlignConfig
from .orw import align


def sweep_run_dir(out: str | Path, alpha: float) -> Path:
    """Where a sweep keeps its run for ``alpha``: ``out/alpha-A``."""
    return Path(out) / f"alpha-{alpha:g}"


def align_sweep(config: AlignConfig, alphas: list[float], out: str | Path, *, progress: str = "auto") -> dict[str, Any]:
    """Run :func:`~flowsteer.methods.orw.align` once per alpha into ``out/alpha-A``; write ``sweep.json`` and
    ``pareto.png``; returns the summary (empty ``points`` on ranks other than 0)."""
    runs = []
    for a in alphas:
        with claim_folder(sweep_run_dir(out, a), "align", dist=setup()):  # each run is an align run of its own
            runs.append(align(dataclasses.replace(config, alpha=float(a)), sweep_run_dir(out, a), progress=progress))
    if not setup().is_main:
        return {"points": []}
    return write_sweep_summary(out, runs)


def write_sweep_summary(out: str | Path, runs: list[Run | Path]) -> dict[str, Any]:
    """Write ``out/sweep.json`` and ``out/pareto.png`` from finished align runs of one base and reward
    (the runs themselves, or the folders of runs that finished in other processes)."""
    out = Path(out)
    points, settings = [], {}
    for run in runs:
        config, path = (run.config, run.path) if isinstance(run, Run) else (read_config(run), Path(run))
        settings = config["settings"]
        points.append({"alpha": float(settings["alpha"]), "run": str(path), **config["final"]})
    points.sort(key=lambda p: p["alpha"])
    summary = {"reward": settings.get("reward"), "method": settings.get("method"), "tau": settings.get("tau"),
               "steps": settings.get("train", {}).get("steps"), "points": points}
    atomic_write_json(out / SWEEP_FILE, summary)
    save_pareto(points, out / PARETO_PLOT, title=f"{summary['method']}: reward vs diversity over alpha")
    return summary
