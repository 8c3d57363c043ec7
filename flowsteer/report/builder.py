"""Builds ``index.html`` and its PNGs from run and sweep folders (see :mod:`flowsteer.report`)."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import RunFolderError
from ..runs import (CONFIG_FILE, EVALUATION_FILE, FINAL_METRICS_FILE, METRICS_FILE, SWEEP_FILE, Run, load_run,
                    read_config)

N_IMAGES, N_POINTS = 64, 1000

# Columns of the final-metrics table, in order; a column is shown when some run has it.
TRAINING_COLUMNS = (
    ("reward_mean", "reward"), ("class_entropy", "class entropy"), ("pairwise_distance", "pairwise dist."),
    ("w2_to_reference", "W2 to base"), ("final_alpha", "alpha (final)"), ("w2_to_target_nfe1", "W2@1"),
    ("w2_to_target_nfe4", "W2@4"), ("w2_to_target_nfe50", "W2@50"), ("fd_to_target_nfe4", "FD@4"),
    ("fd_to_target_nfe50", "FD@50"), ("path_length", "path length"), ("straightness", "straightness"),
    ("w2_to_target_nfe50_last3_std", "W2@50 std (last 3)"), ("steps", "steps"),
)
EVALUATION_COLUMNS = (
    ("metrics.reward_mean", "reward"), ("metrics.class_entropy", "class entropy"),
    ("metrics.top_class_share", "top-class share"), ("metrics.pairwise_distance", "pairwise dist."),
    ("metrics.w2_to_reference", "W2 to reference"), ("metrics.w2_to_target", "W2 to target"),
    ("metrics.fd_to_target", "FD to target"), ("metrics.path_length", "path length"), ("n", "samples"),
)


@dataclass
class ReportRun:
    """One run folder as the report sees it."""

    path: Path
    label: str
    config: dict[str, Any]
    final: dict[str, Any]
    evaluation: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def base(self) -> Path | None:
        base = self.config.get("base")
        return Path(base) if base else None

    def describe(self) -> str:
        s = self.config.get("settings", {})
        if self.method == "align":
            alpha = self.final.get("final_alpha", s.get("alpha"))
            return f"{s.get('method', 'align')}, alpha={alpha:g}" if isinstance(alpha, (int, float)) else str(s.get("method"))
        if self.method == "adapt":
            return f"{s.get('method', 'adapt')} / {s.get('coupling', '?')}"
        return f"pretrain on {self.config.get('data', {}).get('spec', '?')}"


@dataclass
class ReportSweep:
    path: Path
    label: str
    summary: dict[str, Any]
    runs: list[ReportRun] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunFolderError(f"{path}: not valid JSON; re-create it (e.g. re-run flowsteer evaluate)") from None
    return data if isinstance(data, dict) else None


def _load(path: Path, label: str) -> ReportRun:
    config = read_config(path)
    final = _read_json(path / FINAL_METRICS_FILE) or config.get("final") or {}
    return ReportRun(path=path, label=label, config=config, final=final, evaluation=_read_json(path / EVALUATION_FILE))


def collect_runs(paths: list[Path]) -> tuple[list[ReportRun], list[ReportSweep]]:
    """Resolve the command line's folders into runs and sweeps (a sweep's runs are runs too)."""
    runs: list[ReportRun] = []
    sweeps: list[ReportSweep] = []
    names = [p.resolve().name for p in paths]
    for path, name in zip(paths, names):
        label = name if names.count(name) == 1 else f"{path.resolve().parent.name}/{name}"
        if (path / SWEEP_FILE).is_file():
            summary = _read_json(path / SWEEP_FILE) or {}
            sweep = ReportSweep(path=path, label=label, summary=summary)
            for point in summary.get("points", []):
                sub = Path(point.get("run", ""))
                sub = sub if sub.is_dir() else path / sub.name
                if (sub / CONFIG_FILE).is_file():
                    sweep.runs.append(_load(sub, f"{label}/{sub.name}"))
            sweeps.append(sweep)
            runs.extend(sweep.runs)
        elif path.is_dir() and (path / CONFIG_FILE).is_file():
            runs.append(_load(path, label))
        else:
            raise RunFolderError(f"{str(path)!r} is neither a run folder (config.json) nor a sweep folder (sweep.json); "
                                 "pass folders written by flowsteer pretrain, align or adapt")
    return runs, sweeps


# --------------------------------------------------------------------------- samples


class _Sampler:
    """Samples of run folders from one fixed noise batch, cached per folder (bases are shared)."""

    def __init__(self) -> None:
        self.cache: dict[Path, Tensor] = {}
        self.runs: dict[Path, Run] = {}

    def run(self, path: Path) -> Run:
        key = path.resolve()
        if key not in self.runs:
            self.runs[key] = load_run(path)
        return self.runs[key]

    def samples(self, path: Path) -> Tensor:
        key = path.resolve()
        if key not in self.cache:
            run = self.run(path)
            n = N_IMAGES if len(run.shape) == 3 else N_POINTS
            labels = torch.arange(n) % run.num_classes if run.num_classes else None
            self.cache[key] = run.sample(n, steps=50, seed=0, labels=labels).x
        return self.cache[key]


def _data_samples(spec: str, n: int, shape: tuple[int, ...]) -> Tensor | None:
    from ..data import load_data

    try:
        data = load_data(spec, normalize="none")
    except Exception:  # the data may have moved since training; the report goes on without it
        return None
    x = data.train.x
    if tuple(x.shape[1:]) != tuple(shape):
        return None
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]


def _sample_groups(runs: list[ReportRun]) -> list[tuple[str, list[ReportRun], Path | None]]:
    """Fine-tuned runs grouped by base (so that a base is shown once beside all its fine-tunes); pretrain runs alone."""
    groups: dict[str, tuple[str, list[ReportRun], Path | None]] = {}
    for run in runs:
        if run.base is not None and (run.base / CONFIG_FILE).is_file():
            key = f"{run.method}:{run.base.resolve()}"
            groups.setdefault(key, (f"{run.method} runs from base {run.base.name}", [], run.base))[1].append(run)
        else:
            groups[f"self:{run.path.resolve()}"] = (run.label, [run], None)
    return list(groups.values())


# --------------------------------------------------------------------------- page


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return html.escape(str(value))


def _dig(d: dict[str, Any] | None, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _table(runs: list[ReportRun], columns, get) -> str:
    shown = [(k, name) for k, name in columns if any(isinstance(get(r, k), (int, float)) for r in runs)]
    if not shown:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in shown)
    rows = []
    for r in runs:
        cells = "".join(f"<td>{_fmt(get(r, k))}</td>" for k, _ in shown)
        rows.append(f"<tr><th>{html.escape(r.label)}</th><td>{html.escape(r.method)}</td>"
                    f"<td>{html.escape(r.describe())}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>run</th><th>kind</th><th>settings</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
thead th { background: #f4f4f4; } tbody th, td:nth-child(2), td:nth-child(3) { text-align: left; }
.note { color: #777; font-size: .9em; } code { background: #f4f4f4; padding: 0 .2em; }
"""


def write_report(paths: list[Path], out: Path, *, title: str = "flowsteer report",
                 say: Callable[[str], None] = lambda _: None) -> Path:
    """Write ``out/index.html`` and ``out/img/*.png`` for the given run/sweep folders; returns the page's path."""
    from ..io import atomic_write_text
    from ..plots import (save_curves_vs_nfe, save_loss_curve, save_metric_vs_nfe, save_metric_vs_step, save_panels,
                         save_pareto, save_training_curves)

    runs, sweeps = collect_runs(paths)
    if not runs:
        raise RunFolderError("no finished runs found in the given folders; pass run folders with config.json")
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    sampler = _Sampler()
    parts: list[str] = [f"<h1>{html.escape(title)}</h1>",
                        f"<p class='note'>{len(runs)} run(s); written by <code>flowsteer report</code>. "
                        "Samples come from one fixed noise batch (seed 0), so panels side by side share their noise.</p>"]

    def figure(name: str, caption: str) -> str:
        return f"<figure><img src='img/{name}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"

    # 1. samples
    parts.append("<h2>Samples</h2>")
    for i, (heading, group, base) in enumerate(_sample_groups(runs)):
        say(f"report: sampling {heading}")
        first = group[0]
        shape = tuple(first.config.get("data", {}).get("shape", ()))
        n = N_IMAGES if len(shape) == 3 else N_POINTS
        panels: list[tuple[str, Tensor]] = []
        if base is not None:
            panels.append((f"base: {base.name}", sampler.samples(base)))
        else:
            data = _data_samples(first.config.get("data", {}).get("spec", ""), n, shape)
            if data is not None:
                panels.append(("training data", data))
        panels += [(f"{r.label}: {r.describe()}", sampler.samples(r.path)) for r in group]
        if first.method == "adapt":
            spec = first.config.get("target", {}).get("spec")
            data = _data_samples(spec, n, shape) if spec else None
            if data is not None:
                panels.append((f"target data: {spec}", data))
        name = f"samples-{i}.png"
        save_panels(panels, img / name)
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        parts.append(figure(name, "left to right: " + "; ".join(c for c, _ in panels)))

    # 2. training curves
    parts.append("<h2>Training curves</h2>")
    for i, r in enumerate(runs):
        metrics = r.path / METRICS_FILE
        if not metrics.is_file():
            continue
        name = f"curves-{i}.png"
        if r.method == "align":
            save_training_curves(metrics, img / name, title=f"{r.label}: {r.describe()}")
        elif r.method == "adapt":
            records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
            save_metric_vs_step([x for x in records if x.get("kind") == "eval"], img / name,
                                title=f"{r.label}: {r.describe()}")
        else:
            save_loss_curve(metrics, img / name, title=f"{r.label}: training loss")
        parts.append(figure(name, f"{r.label} ({r.describe()})"))

    # 3. pareto plots of sweeps
    if sweeps:
        parts.append("<h2>Reward and diversity across alpha</h2>")
        for i, sw in enumerate(sweeps):
            points = [p for p in sw.summary.get("points", []) if "reward_mean" in p]
            if not points:
                continue
            name = f"pareto-{i}.png"
            save_pareto(points, img / name, title=f"{sw.label}: {sw.summary.get('method', '')} on {sw.summary.get('reward', '')}")
            parts.append(figure(name, f"{sw.label}: mean reward against diversity, one point per alpha"))

    # 4. metric vs NFE
    nfe_parts = []
    adapts = [r for r in runs if r.method == "adapt" and any(k.startswith("w2_to_target_nfe") for k in r.final)]
    if adapts:
        save_metric_vs_nfe({f"{r.label} ({r.describe()})": r.final for r in adapts}, img / "nfe-adapt.png",
                           title="adapt runs: distance to the target against solver steps")
        nfe_parts.append(figure("nfe-adapt.png", "W2 and Frechet distance to held-out target samples per NFE (Euler)"))
    evaluated = [r for r in runs if r.evaluation and r.evaluation.get("per_nfe")]
    keys = sorted({k for r in evaluated for row in r.evaluation["per_nfe"] for k in row if k != "nfe"})
    for key in keys:
        def name_of(r: ReportRun) -> str:
            against = _dig(r.evaluation, "target_spec") if "target" in key else _dig(r.evaluation, "reward_spec") \
                if key.startswith("reward") else None
            return f"{r.label} ({r.describe()})" + (f" vs {against}" if against else "")

        series = {name_of(r): {int(row["nfe"]): row[key] for row in r.evaluation["per_nfe"] if key in row}
                  for r in evaluated}
        series = {k: v for k, v in series.items() if v}
        name = f"nfe-eval-{key}.png"
        save_curves_vs_nfe(series, img / name, ylabel=key.replace("_", " "), log_y=not key.startswith("reward"),
                           title=f"{key.replace('_', ' ')} per NFE (flowsteer evaluate)")
        nfe_parts.append(figure(name, f"{key} against the number of solver steps, from evaluation.json"))
    if nfe_parts:
        parts.append("<h2>Quality against the number of steps</h2>")
        parts.extend(nfe_parts)

    # 5. tables
    parts.append("<h2>Final metrics</h2>")
    training = _table(runs, TRAINING_COLUMNS, lambda r, k: r.final.get(k))
    parts.append("<h3>At the end of training</h3>" + (training or "<p class='note'>none recorded</p>"))
    if evaluated:
        parts.append("<h3>From <code>flowsteer evaluate</code> (evaluation.json)</h3>")
        parts.append(_table(evaluated, EVALUATION_COLUMNS, lambda r, k: _dig(r.evaluation, k)))
        for r in evaluated:
            hist = _dig(r.evaluation, "metrics.class_histogram")
            if hist:
                cells = " ".join(f"{c}: {v:.3f}" for c, v in enumerate(hist))
                parts.append(f"<p class='note'>{html.escape(r.label)} class histogram - {cells}</p>")

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
