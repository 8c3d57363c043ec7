"""The report's opening: what was run and what to conclude, in sentences made from the measured figures.

Every sentence is generated from the run folders (``config.json``, ``final_metrics.json`` and, where
present, ``evaluation.json``), names where its figures come from, and links to the table or plot that
shows them.  Figures are printed as ``flowsteer evaluate`` and the demo print them (three decimals), so
the page, ``summary.json`` and the terminal agree to the digit.

Rules (stated once here, and in the page where they are used):

* an ``align`` run **collapsed** when its most frequent class holds at least :data:`COLLAPSE_SHARE` of the
  samples; otherwise it **kept** every class holding at least :data:`KEPT_SHARE` of them;
* class entropy is shown beside ``ln k``, its value were the samples spread evenly over the ``k`` classes kept;
* ``adapt`` runs are compared on the Frechet distance to held-out target samples at the largest NFE and,
  where measured, at 4 NFE (lower is better); two figures within 10 % of each other are called "about the
  same" - one seed each, so smaller differences say nothing.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

COLLAPSE_SHARE = 0.9
KEPT_SHARE = 0.01
SAME_WITHIN = 0.10

# Reward specs whose mean reward has a plain name (the probability the classifier gives the wanted classes).
REWARD_NAMES = {"even-digits": "P(even)", "even-mnist": "P(even)", "even-mnist-judge": "P(even)"}


def reward_name(spec: str | None) -> str:
    """What ``reward_mean`` is called for a reward spec: ``P(even)`` for ``even-digits``, else ``mean reward``."""
    return REWARD_NAMES.get(str(spec), "mean reward")


@dataclass(frozen=True)
class Figures:
    """The figures of one run the summary speaks of, and where they were measured."""

    metrics: dict[str, Any]
    per_nfe: dict[int, dict[str, Any]]
    source: str  # a phrase: "flowsteer evaluate, 1000 samples at 50 NFE" or "the last training evaluation"
    anchor: str  # the id of the table that shows them


def figures_of(run: Any) -> Figures:
    """``evaluation.json``'s figures when the run has one (held-out, fixed noise), else the training's final ones."""
    ev = run.evaluation
    if ev and isinstance(ev.get("metrics"), dict):
        per_nfe = {int(r["nfe"]): r for r in ev.get("per_nfe", []) if isinstance(r, dict) and "nfe" in r}
        nfe = max(per_nfe) if per_nfe else None
        held = f" against {ev['n_heldout']} held-out target samples" if ev.get("n_heldout") else ""
        return Figures(ev["metrics"], per_nfe, f"flowsteer evaluate: {ev.get('n', '?')} samples"
                       + (f" at {nfe} NFE" if nfe else "") + held, "table-evaluate")
    final = dict(run.final)
    per_nfe: dict[int, dict[str, Any]] = {}
    for key, value in run.final.items():
        for family in ("w2_to_target", "fd_to_target"):
            tail = key[len(family) + 4:] if key.startswith(f"{family}_nfe") else ""
            if tail.isdigit():
                per_nfe.setdefault(int(tail), {})[family] = value
    if per_nfe:
        final.setdefault("fd_to_target", per_nfe[max(per_nfe)].get("fd_to_target"))
        final.setdefault("w2_to_target", per_nfe[max(per_nfe)].get("w2_to_target"))
    return Figures(final, per_nfe, "the last evaluation during training", "table-training")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _link(text: str, anchor: str) -> str:
    return f"<a href='#{anchor}'>{html.escape(text)}</a>"


def _what_was_run(runs: list[Any]) -> str:
    kinds: dict[str, list[str]] = {}
    for r in runs:
        kinds.setdefault(r.method, []).append(r.describe())
    parts = []
    for method in ("pretrain", "align", "adapt"):
        if method in kinds:
            descs = kinds.pop(method)
            parts.append(f"{len(descs)} {method} ({'; '.join(descs)})")
    parts += [f"{len(d)} {m}" for m, d in kinds.items()]
    return f"{len(runs)} run(s): " + ", ".join(parts) + "."


def _align_sentence(run: Any, samples_anchor: str | None) -> str | None:
    f = figures_of(run)
    m = f.metrics
    spec = (run.evaluation or {}).get("reward_spec") or run.config.get("settings", {}).get("reward")
    reward = _num(m.get("reward_mean"))
    if reward is None:
        return None
    name = reward_name(spec if isinstance(spec, str) else None)
    who = f"{run.label} ({run.describe()})"
    hist = m.get("class_histogram")
    entropy = _num(m.get("class_entropy"))
    see = _link("table", f.anchor) + (", " + _link("samples", samples_anchor) if samples_anchor else "")
    if isinstance(hist, list) and hist and entropy is not None:
        top = max(range(len(hist)), key=lambda c: hist[c])
        if hist[top] >= COLLAPSE_SHARE:
            return (f"{html.escape(who)} collapsed: {100 * hist[top]:.0f} % of samples are one class ({top}); "
                    f"{name} {reward:.3f}, class entropy {entropy:.3f} nats ({html.escape(f.source)}; {see}).")
        kept = [c for c, share in enumerate(hist) if share >= KEPT_SHARE]
        rarest = min(kept, key=lambda c: hist[c])
        return (f"{html.escape(who)} kept {len(kept)} classes ({', '.join(map(str, kept))}; the rarest, {rarest}, holds "
                f"{100 * hist[rarest]:.1f} % of samples): {name} {reward:.3f}, class entropy {entropy:.3f} nats (ln "
                f"{len(kept)} = {math.log(len(kept)):.3f} would be even over the {len(kept)} classes kept) "
                f"({html.escape(f.source)}; {see}).")
    extra = ", ".join(f"{label} {v:.3f}" for label, key in (("pairwise distance", "pairwise_distance"),
                                                            ("W2 to base", "w2_to_reference"))
                      if (v := _num(m.get(key))) is not None)
    return f"{html.escape(who)}: {name} {reward:.3f}" + (f", {extra}" if extra else "") + \
        f" ({html.escape(f.source)}; {see})."


def _compare(values: dict[str, float]) -> str:
    """``gft 7.8, sft 7.1`` and a verdict: the lowest, or "about the same" when all are within 10 %."""
    listed = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in values.items())
    if len(values) < 2:
        return listed
    lo, hi = min(values.values()), max(values.values())
    if hi <= lo * (1 + SAME_WITHIN):
        return f"{listed}: about the same (within {100 * SAME_WITHIN:.0f} %)"
    best = min(values, key=values.get)
    return f"{listed}: {html.escape(best)} lowest"


def _adapt_sentences(runs: list[Any], bases: dict[str, Any]) -> list[str]:
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in runs:
        target = r.config.get("target", {}).get("spec", "?")
        groups.setdefault((str(r.base.name if r.base else "?"), str(target)), []).append(r)
    out = []
    for (base, target), group in groups.items():
        figs = {f"{r.label} ({r.describe()})": figures_of(r) for r in group}
        at_end = {k: v for k, f in figs.items() if (v := _num(f.metrics.get("fd_to_target"))) is not None}
        if not at_end:
            continue
        first = next(iter(figs.values()))
        sentence = (f"Adapting {html.escape(base)} to {html.escape(target)}, Fréchet distance to held-out target "
                    f"samples (lower is better): {_compare(at_end)}")
        base_run = bases.get(base)
        if base_run is not None and (v := _num(figures_of(base_run).metrics.get("fd_to_target"))) is not None:
            sentence += f"; the base is at {v:.3f}"
        few = {k: v for k, f in figs.items() if (v := _num(f.per_nfe.get(4, {}).get("fd_to_target"))) is not None}
        if few:
            sentence += f". With 4 solver steps: {_compare(few)}"
        couplings = {r.config.get("settings", {}).get("coupling") for r in group}
        if len(couplings) == 1 and few:
            sentence += f" (every run here used the {html.escape(str(couplings.pop()))} coupling)"
        out.append(f"{sentence} ({html.escape(first.source)}; one seed each; {_link('table', first.anchor)}, "
                   f"{_link('plot', 'quality-vs-steps')}).")
    return out


def opening_summary(runs: list[Any], *, samples_anchor: dict[str, str], note: str | None = None) -> str:
    """The page's opening section (HTML): what was run, then one sentence per conclusion the figures support.

    ``samples_anchor``: run label -> the id of the samples figure that shows it.
    """
    items = [html.escape(_what_was_run(runs))]
    for r in runs:
        if r.method == "align":
            sentence = _align_sentence(r, samples_anchor.get(r.label))
            if sentence:
                items.append(sentence)
    bases = {r.path.name: r for r in runs if r.method == "pretrain"}
    items += _adapt_sentences([r for r in runs if r.method == "adapt"], bases)
    if note:
        items.append(f"<strong>{html.escape(note)}</strong>")
    rules = (f"Collapsed: the top class holds at least {100 * COLLAPSE_SHARE:.0f} % of samples. Kept: a class holds "
             f"at least {100 * KEPT_SHARE:.0f} %.")
    return ("<section id='summary'><h2>What was run, and what it shows</h2><ul>"
            + "".join(f"<li>{item}</li>" for item in items)
            + f"</ul><p class='note'>{html.escape(rules)}</p></section>")
