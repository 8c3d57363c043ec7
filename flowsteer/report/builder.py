"""Builds ``index.html`` and its PNGs from run and sweep folders (see :mod:`flowsteer.report`)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import RunFolderError
from ..runs import CONFIG_FILE, METRICS_FILE, Run, load_run
from .collect import ReportRun, collect_runs
from .compare import comparison_section

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
    ("n_heldout", "held-out target samples"),
)


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


def _table(runs: list[ReportRun], columns, get, *, anchor: str, caption: str) -> str:
    shown = [(k, name) for k, name in columns if any(isinstance(get(r, k), (int, float)) for r in runs)]
    if not shown:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in shown)
    rows = []
    for r in runs:
        cells = "".join(f"<td>{_fmt(get(r, k))}</td>" for k, _ in shown)
        rows.append(f"<tr><th>{html.escape(r.label)}</th><td>{html.escape(r.method)}</td>"
                    f"<td>{html.escape(r.describe())}</td>{cells}</tr>")
    return (f"<p class='note' id='{anchor}'>{html.escape(caption)}</p><div class='scroll'><table>"
            f"<thead><tr><th>run</th><th>kind</th><th>settings</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.row figure { margin: 0; display: table; } .row figcaption { display: table-caption; caption-side: bottom; }
.scroll { overflow-x: auto; max-width: 100%; } caption { text-align: left; color: #555; padding: .3em 0; }
li { margin: .4em 0; line-height: 1.4; }
figcaption { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
thead th { background: #f4f4f4; } tbody th, td:nth-child(2), td:nth-child(3) { text-align: left; }
.note { color: #777; font-size: .9em; } code { background: #f4f4f4; padding: 0 .2em; }
"""


def _eval_caption(evaluated: list[ReportRun]) -> str:
    nfes = sorted({max(r.evaluation.get("nfes") or [0]) for r in evaluated if r.evaluation})
    return (f"From flowsteer evaluate (evaluation.json): each run's figures at {' / '.join(map(str, nfes))} NFE on the "
            "samples counted in the 'samples' column (one fixed noise batch; the seed is in the file), W2 and FD to "
            "the target against the held-out samples of the last column. These are the figures the opening summary "
            "quotes.")


FIGURE_NAMES = {"reward_mean": "mean reward", "w2_to_target": "W2 to target", "fd_to_target": "Frechet distance to target",
                "w2_to_reference": "W2 to reference"}

TRAINING_CAPTION = ("At the end of training (final_metrics.json): the last evaluation during training, on the run's own "
                    "evaluation samples (W2@K / FD@K: K Euler steps). Not the same samples as flowsteer evaluate's below.")


def write_report(paths: list[Path], out: Path, *, title: str = "flowsteer report", note: str | None = None,
                 say: Callable[[str], None] = lambda _: None) -> Path:
    """Write ``out/index.html`` and ``out/img/*.png`` for the given run/sweep folders (or folders of them);
    returns the page's path.  ``note``: a sentence in bold at the end of the opening summary."""
    from ..io import atomic_write_text
    from ..plots import (save_class_histograms, save_curves_vs_nfe, save_loss_curve, save_metric_vs_nfe,
                         save_metric_vs_step, save_panels, save_pareto, save_training_curves)
    from .summary import opening_summary

    runs, sweeps = collect_runs(paths)
    if not runs:
        raise RunFolderError("no finished runs found in the given folders; pass run folders with config.json")
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    sampler = _Sampler()
    parts: list[str] = []

    def figure(name: str, caption: str, alt: str | None = None) -> str:
        return (f"<figure><img src='img/{name}' alt='{html.escape(alt or caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    # 1. samples, with each group's class histograms beside them
    parts.append("<h2 id='samples'>Samples</h2>")
    samples_anchor: dict[str, str] = {}
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
        what = "image grids" if len(shape) == 3 else "scatter plots"
        row = [figure(name, "left to right: " + "; ".join(c for c, _ in panels),
                      alt=f"{len(panels)} {what} of samples side by side: " + "; ".join(c for c, _ in panels))]
        hists = [(f"{r.label}: {r.describe()}", h) for r in group
                 if isinstance(h := _dig(r.evaluation, "metrics.class_histogram"), list) and h]
        if hists:
            hist_name = f"classes-{i}.png"
            save_class_histograms(hists, img / hist_name)
            spec = _dig(group[0].evaluation, "reward_spec")
            row.append(figure(hist_name, f"share of samples per predicted class (the {spec} reward's classifier; "
                                         "flowsteer evaluate)",
                              alt="bar charts of the share of samples per class: " + "; ".join(
                                  f"{c}: " + ", ".join(f"{k} {v:.2f}" for k, v in enumerate(h)) for c, h in hists)))
        parts.append(f"<h3 id='samples-{i}'>{html.escape(heading)}</h3><div class='row'>{''.join(row)}</div>")
        for r in group:
            samples_anchor[r.label] = f"samples-{i}"

    # 2. training curves
    parts.append("<h2 id='training-curves'>Training curves</h2>")
    for i, r in enumerate(runs):
        metrics = r.path / METRICS_FILE
        if not metrics.is_file():
            continue
        name = f"curves-{i}.png"
        if r.method == "align":
            save_training_curves(metrics, img / name, title=f"{r.label}: {r.describe()}")
            alt = f"{r.label}: reward, diversity and W2 to the base against the training step"
        elif r.method == "adapt":
            records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
            save_metric_vs_step([x for x in records if x.get("kind") == "eval"], img / name,
                                title=f"{r.label}: {r.describe()}")
            alt = f"{r.label}: W2 and Frechet distance to the target against the training step, one line per NFE"
        else:
            save_loss_curve(metrics, img / name, title=f"{r.label}: training loss")
            alt = f"{r.label}: training loss against the step (log scale)"
        parts.append(figure(name, f"{r.label} ({r.describe()})", alt=alt))

    # 3. pareto plots of sweeps
    if sweeps:
        knobs = {str(sw.summary.get("knob", "alpha")) for sw in sweeps}
        parts.append(f"<h2 id='pareto'>Reward and diversity across {'alpha' if knobs == {'alpha'} else 'each sweep’s knob'}"
                     "</h2>")
        for i, sw in enumerate(sweeps):
            knob = str(sw.summary.get("knob", "alpha"))  # alpha, kl_beta (flow-grpo) or nft_beta (nft)
            points = [p for p in sw.summary.get("points", []) if "reward_mean" in p and knob in p]
            if not points:
                continue
            name = f"pareto-{i}.png"
            save_pareto(points, img / name, knob=knob,
                        title=f"{sw.label}: {sw.summary.get('method', '')} on {sw.summary.get('reward', '')}")
            parts.append(figure(name, f"{sw.label}: mean reward against diversity, one point per {knob} (training's "
                                      "last evaluation)"))

    # 4. metric vs NFE
    nfe_parts = []
    adapts = [r for r in runs if r.method == "adapt" and any(k.startswith("w2_to_target_nfe") for k in r.final)]
    if adapts:
        save_metric_vs_nfe({f"{r.label} ({r.describe()})": r.final for r in adapts}, img / "nfe-adapt.png",
                           title="adapt runs: distance to the target against solver steps")
        nfe_parts.append(figure("nfe-adapt.png", "W2 and Frechet distance to held-out target samples per NFE (Euler), "
                                                 "at the end of training"))
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
        label = FIGURE_NAMES.get(key, key.replace("_", " "))
        save_curves_vs_nfe(series, img / name, ylabel=label, log_y=not key.startswith("reward"),
                           title=f"{label} per NFE (flowsteer evaluate)")
        nfe_parts.append(figure(name, f"{label} ({key}) against the number of solver steps, from flowsteer evaluate "
                                      "(evaluation.json)"))
    if nfe_parts:
        parts.append("<h2 id='quality-vs-steps'>Quality against the number of steps</h2>")
        parts.extend(nfe_parts)

    # 5. tables
    parts.append("<h2 id='final-metrics'>Final metrics</h2>")
    parts.append(_table(runs, TRAINING_COLUMNS, lambda r, k: r.final.get(k), anchor="table-training",
                        caption=TRAINING_CAPTION) or "<p class='note' id='table-training'>none recorded</p>")
    if evaluated:
        parts.append(_table(evaluated, EVALUATION_COLUMNS, lambda r, k: _dig(r.evaluation, k), anchor="table-evaluate",
                            caption=_eval_caption(evaluated)))
    parts.append(comparison_section(runs))  # 6. align methods side by side at one budget (when two or more counted)

    head = [f"<h1>{html.escape(title)}</h1>",
            opening_summary(runs, samples_anchor=samples_anchor, note=note),
            f"<p class='note'>{len(runs)} run(s); written by <code>flowsteer report</code>. Samples come from one fixed "
            "noise batch (seed 0), so panels side by side share their noise.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(head + parts) + "</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
