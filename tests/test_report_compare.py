"""The report's comparison of align methods at one budget (issue 20): figures from each run's `final`, ratios to
the ORW-CFM-W2 run of the same base and reward."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowsteer.report.collect import ReportRun
from flowsteer.report.compare import comparison_rows, comparison_section


def _run(label: str, method: str, final: dict, *, alpha: float = 0.15, reward: str = "even-digits") -> ReportRun:
    settings = {"method": method, "alpha": alpha, "reward": reward, "kl_beta": 0.0, "nft_beta": 1.0}
    return ReportRun(path=Path(label), label=label, config={"method": "align", "base": "runs/digits",
                                                            "settings": settings}, final=final)


CUDA = {"peak_memory_source": "torch.cuda.max_memory_allocated"}


def test_ratios_divide_by_the_default_alpha_orw_run_of_the_same_base_and_reward():
    orw = _run("orw", "orw-w2", {"reward_mean": 0.9, "class_entropy": 1.5, "reward_calls": 2000, "steps": 10,
                                 "train_seconds": 4.0, "peak_memory_mb": 200.0, "model_evals": 24000, **CUDA})
    other_alpha = _run("orw-a1", "orw-w2", {"reward_calls": 2000, "steps": 10, "train_seconds": 1.0,
                                            "peak_memory_mb": 1.0}, alpha=1.0)
    grpo = _run("grpo", "flow-grpo", {"reward_mean": 1.0, "pairwise_distance": 0.3, "reward_calls": 1000, "steps": 20,
                                      "train_seconds": 6.0, "peak_memory_mb": 300.0, **CUDA})
    elsewhere = _run("nft-other-reward", "nft", {"reward_calls": 5, "steps": 1, "train_seconds": 1.0},
                     reward="digits:1")
    uncounted = _run("old", "nft", {"reward_mean": 0.5})  # written before budgets were counted: left out
    groups = comparison_rows([other_alpha, orw, grpo, elsewhere, uncounted])
    assert [len(rows) for _, _, rows in groups] == [3, 1]
    heading, ref, rows = groups[0]
    assert ref.label == "orw" and "even-digits" in heading
    by = {r.label: row for r, row in rows}
    assert by["orw"]["time_ratio"] == 1.0 and by["orw"]["memory_ratio"] == 1.0
    # flow-grpo: 0.3 s/step against 0.4; 6 s per 1000 calls against 2; 300 MiB against 200; diversity falls back
    assert by["grpo"]["time_ratio"] == pytest.approx(0.75)
    assert by["grpo"]["time_per_call_ratio"] == pytest.approx(3.0)
    assert by["grpo"]["memory_ratio"] == pytest.approx(1.5) and by["grpo"]["diversity"] == 0.3
    assert groups[1][1] is None and groups[1][2][0][1]["time_ratio"] is None  # no ORW run there: no ratio
    page = comparison_section([orw, grpo])
    assert "Methods at one budget" in page and "<td>0.75</td>" in page and "<td>1.5</td>" in page
    assert comparison_section([orw]) == ""  # nothing to compare
    # a CPU run's peak is its process's RSS, which grows with whatever ran before in it: no memory ratio
    rss = {"peak_memory_source": "process peak RSS (getrusage)"}
    cpu = comparison_rows([_run("orw", "orw-w2", {**orw.final, **rss}), _run("grpo", "flow-grpo", {**grpo.final, **rss})])
    assert all(row["memory_ratio"] is None and row["time_ratio"] is not None for _, row in cpu[0][2])


def test_the_report_of_a_folder_of_align_runs_shows_the_comparison(moons_run, tmp_path):
    from flowsteer import TrainConfig
    from flowsteer.methods.configs import AlignConfig
    from flowsteer.methods.orw import align
    from flowsteer.report.builder import write_report

    folder = tmp_path / "runs"
    for method in ("orw-w2", "nft"):
        align(AlignConfig(base=str(moons_run), reward="target:1.5,0", method=method, rollout_steps=2, eval_every=0,
                          eval_samples=16, train=TrainConfig(steps=3, batch_size=16)), folder / method, progress="quiet")
    page = write_report([folder], tmp_path / "report").read_text()
    assert "id='budget-comparison'" in page and "s/step vs ORW-CFM-W2" in page
    assert "nft, nft_beta=1" in page and "process peak RSS" in page


def test_each_method_is_labelled_by_its_own_knob_and_one_class_has_entropy_zero_not_minus_zero():
    from flowsteer.metrics import entropy

    def labelled(method, settings, final=None):
        return ReportRun(path=Path(method), label=method, config={"method": "align", "settings": {
            "method": method, **settings}}, final=final or {}).describe()

    assert labelled("rwr", {"tau": 5.0, "alpha": 0.0}) == "rwr, tau=5"
    assert labelled("raft", {"raft_fraction": 0.25, "alpha": 0.15, "w2": True}) == "raft, raft_fraction=0.25, alpha=0.15"
    assert labelled("orw-w2", {"alpha": 0.15}, {"final_alpha": 0.2}) == "orw-w2, alpha=0.2"
    assert labelled("nft", {"nft_beta": 0.5}) == "nft, nft_beta=0.5"
    assert labelled("orw", {"alpha": 0.15, "tau": 5.0, "target_beta": 0.05}, {"final_alpha": 0.0}) == \
        "orw, target_beta=0.05, tau=5"
    assert labelled("orw", {"tau": 1.25, "target_beta": 0.1, "anchor_share": 0.5}, {"final_alpha": 0.0}) == \
        "orw, target_beta=0.1, tau=1.25, anchor=0.5"
    assert str(entropy([1.0, 0.0])) == "0.0"
