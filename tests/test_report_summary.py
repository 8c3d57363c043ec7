"""The report's opening sentences (flowsteer.report.summary) from hand-made run records: the collapse and
kept-class rules at their thresholds, where each figure is taken from, and the adapt comparison."""

import math
from pathlib import Path

from flowsteer.report.collect import ReportRun
from flowsteer.report.summary import COLLAPSE_SHARE, KEPT_SHARE, figures_of, opening_summary


def align_run(label: str, hist: list[float], *, reward: float, alpha: float) -> ReportRun:
    p = [h for h in hist if h > 0]
    entropy = -sum(h * math.log(h) for h in p)
    evaluation = {"n": 1000, "nfes": [1, 50], "reward_spec": "even-digits",
                  "metrics": {"reward_mean": reward, "class_histogram": hist, "class_entropy": entropy,
                              "top_class": max(range(len(hist)), key=hist.__getitem__),
                              "top_class_share": max(hist)},
                  "per_nfe": [{"nfe": 1, "reward_mean": 0.1}, {"nfe": 50, "reward_mean": reward}]}
    return ReportRun(path=Path(label), label=label, config={"method": "align", "settings": {"method": "orw",
                     "alpha": alpha, "reward": "even-digits"}}, final={"final_alpha": alpha, "reward_mean": 0.5},
                     evaluation=evaluation)


def items(html: str) -> list[str]:
    return [li.split("</li>")[0] for li in html.split("<li>")[1:]]


def test_collapse_and_kept_classes_at_their_thresholds():
    collapsed = align_run("a0", [COLLAPSE_SHARE, 1 - COLLAPSE_SHARE] + [0.0] * 8, reward=0.99, alpha=0.0)
    just_below = align_run("a1", [COLLAPSE_SHARE - 0.01, 0.01 + 0.1 - KEPT_SHARE, KEPT_SHARE] + [0.0] * 7,
                           reward=0.98, alpha=0.05)
    spread = align_run("a2", [0.2, 0.004, 0.048, 0.0, 0.2, 0.0, 0.35, 0.0, 0.196, 0.002], reward=0.943, alpha=0.15)
    text = items(opening_summary([collapsed, just_below, spread], samples_anchor={"a0": "samples-0"}))
    assert text[1].startswith("a0 (orw, alpha=0) collapsed: 90 % of samples are one class (0); P(even) 0.990")
    assert "href='#samples-0'" in text[1] and "href='#table-evaluate'" in text[1]
    assert "flowsteer evaluate: 1000 samples at 50 NFE" in text[1]
    assert text[2].startswith("a1 (orw, alpha=0.05) kept 3 classes (0, 1, 2;")  # 0.89 is below the collapse share
    # classes 1 and 9 (0.4 % and 0.2 %) are below the kept share; class 2 (4.8 %) is the rarest kept
    assert "kept 5 classes (0, 2, 4, 6, 8; the rarest, 2, holds 4.8 % of samples)" in text[3] and "P(even) 0.943" in text[3]
    entropy = figures_of(spread).metrics["class_entropy"]
    assert f"class entropy {entropy:.3f} nats (ln 5 = {math.log(5):.3f} would be even over the 5 classes kept)" in text[3]


def test_training_figures_are_used_and_named_when_there_is_no_evaluation():
    run = ReportRun(path=Path("g"), label="g", config={"method": "adapt", "settings": {"method": "gft",
                    "coupling": "ot"}, "target": {"spec": "moons"}, "base": "b"},
                    final={"fd_to_target_nfe4": 0.5, "fd_to_target_nfe50": 0.2, "w2_to_target_nfe50": 0.1})
    other = ReportRun(path=Path("s"), label="s", config={"method": "adapt", "settings": {"method": "sft",
                      "coupling": "ot"}, "target": {"spec": "moons"}, "base": "b"},
                      final={"fd_to_target_nfe4": 0.9, "fd_to_target_nfe50": 0.21, "w2_to_target_nfe50": 0.1})
    f = figures_of(run)
    assert f.metrics["fd_to_target"] == 0.2 and f.per_nfe[4]["fd_to_target"] == 0.5 and f.anchor == "table-training"
    text = items(opening_summary([run, other], samples_anchor={}))
    sentence = text[1]
    assert "g (gft / ot) 0.200, s (sft / ot) 0.210: about the same (within 10 %)" in sentence
    assert "With 4 solver steps: g (gft / ot) 0.500, s (sft / ot) 0.900: g (gft / ot) lowest" in sentence
    assert "the last evaluation during training" in sentence and "every run here used the ot coupling" in sentence


def test_a_note_is_said_in_bold_and_nan_figures_are_not_claimed():
    run = align_run("a", [0.5, 0.5] + [0.0] * 8, reward=float("nan"), alpha=0.1)
    html = opening_summary([run], samples_anchor={}, note="too short")
    assert "<strong>too short</strong>" in html and "P(even)" not in html
