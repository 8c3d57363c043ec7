"""The report's comparison of align methods at one budget (issue 20): every align run that counted its budget
(:mod:`flowsteer.methods.budget`), grouped by base and reward, with its quality figures, what it spent, and its
cost as ratios to an ORW-CFM-W2 run of the same group (the one at the default alpha when there are several)."""

from __future__ import annotations

import html
from typing import Any

from ..config import ALIGN_DEFAULT_ALPHA
from .collect import ReportRun

COLUMNS = (
    ("reward_mean", "reward"), ("diversity", "diversity"), ("w2_to_reference", "W2 to base"),
    ("reward_calls", "reward calls"), ("model_evals", "model evals"), ("train_seconds", "train s"),
    ("seconds_per_step", "s / step"), ("seconds_per_1000_reward_calls", "s / 1000 reward calls"),
    ("peak_memory_mb", "peak MiB"), ("time_ratio", "s/step vs ORW-CFM-W2"),
    ("time_per_call_ratio", "s/1000 calls vs ORW-CFM-W2"), ("memory_ratio", "memory vs ORW-CFM-W2"),
)

CAPTION = ("Each align run's budget, counted the same way for every method (final_metrics.json): reward calls are "
           "samples scored; model evals are per-sample forward passes of a velocity network (policy, sampler or "
           "reference) in rollouts and in training; train s is training wall time without evaluations; peak memory "
           "is {source}. Diversity is the class entropy where the reward classifies, else the mean pairwise "
           "distance. Ratios divide by the ORW-CFM-W2 run of the same base and reward ({reference}).")


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def cost_row(final: dict[str, Any]) -> dict[str, float | None]:
    """The comparison's figures of one run's ``final`` (None where the run did not record them)."""
    steps, calls, seconds = (_number(final.get(k)) for k in ("steps", "reward_calls", "train_seconds"))
    diversity = _number(final.get("class_entropy"))
    return {
        "reward_mean": _number(final.get("reward_mean")),
        "diversity": diversity if diversity is not None else _number(final.get("pairwise_distance")),
        "w2_to_reference": _number(final.get("w2_to_reference")), "reward_calls": calls,
        "model_evals": _number(final.get("model_evals")), "train_seconds": seconds,
        "seconds_per_step": seconds / steps if seconds is not None and steps else None,
        "seconds_per_1000_reward_calls": 1000 * seconds / calls if seconds is not None and calls else None,
        "peak_memory_mb": _number(final.get("peak_memory_mb")),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _reference(group: list[ReportRun]) -> ReportRun | None:
    orw = [r for r in group if r.config.get("settings", {}).get("method") == "orw-w2"]
    default = [r for r in orw if r.config["settings"].get("alpha") == ALIGN_DEFAULT_ALPHA]
    return (default or orw or [None])[0]


def comparison_rows(runs: list[ReportRun]) -> list[tuple[str, ReportRun | None, list[tuple[ReportRun, dict]]]]:
    """(group heading, its ORW-CFM-W2 reference run, [(run, figures with ratios)]) per base and reward, for the
    align runs that recorded their budget; groups keep the runs' order."""
    counted = [r for r in runs if r.method == "align" and _number(r.final.get("reward_calls")) is not None]
    groups: dict[tuple[str, str], list[ReportRun]] = {}
    for r in counted:
        key = (str(r.config.get("base", "?")), str(r.config.get("settings", {}).get("reward", "?")))
        groups.setdefault(key, []).append(r)
    out = []
    for (base, reward), group in groups.items():
        ref = _reference(group)
        ref_row = cost_row(ref.final) if ref is not None else {}
        rows = []
        for r in group:
            row = cost_row(r.final)
            row["time_ratio"] = _ratio(row["seconds_per_step"], ref_row.get("seconds_per_step"))
            row["time_per_call_ratio"] = _ratio(row["seconds_per_1000_reward_calls"],
                                                ref_row.get("seconds_per_1000_reward_calls"))
            # a process's peak RSS (CPU) grows with whatever ran before in that process: only CUDA peaks compare
            cuda = all(str(x.final.get("peak_memory_source", "")).startswith("torch.cuda") for x in (r, ref) if x)
            row["memory_ratio"] = _ratio(row["peak_memory_mb"], ref_row.get("peak_memory_mb")) if cuda else None
            rows.append((r, row))
        out.append((f"base {base}, reward {reward}", ref, rows))
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 1000 or float(x).is_integer() else f"{x:.3g}"


def comparison_section(runs: list[ReportRun]) -> str:
    """The report's "Methods at one budget" section (empty when fewer than two align runs counted their budget)."""
    groups = comparison_rows(runs)
    if sum(len(rows) for _, _, rows in groups) < 2:
        return ""
    sources = sorted({str(r.final.get("peak_memory_source")) for _, _, rows in groups for r, _ in rows
                      if r.final.get("peak_memory_source")})
    parts = ["<h2 id='budget-comparison'>Methods at one budget</h2>"]
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in COLUMNS)
    for i, (heading, ref, rows) in enumerate(groups):
        caption = CAPTION.format(source=" / ".join(sources) or "not recorded",
                                 reference=ref.label if ref is not None else "none in this group: no ratios")
        body = "".join(f"<tr><th>{html.escape(r.label)}</th><td>{html.escape(r.describe())}</td>"
                       + "".join(f"<td>{_fmt(row[k])}</td>" for k, _ in COLUMNS) + "</tr>" for r, row in rows)
        parts.append(f"<h3 id='budget-{i}'>{html.escape(heading)}</h3><p class='note'>{html.escape(caption)}</p>"
                     f"<div class='scroll'><table><thead><tr><th>run</th><th>method</th>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table></div>")
    return "\n".join(parts)
