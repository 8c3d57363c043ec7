"""The frontier's stated rule (issue 15), as benchmarks/even_digits.py and benchmarks/mnist_paper.py apply it:
the largest candidate beta whose predicted even share under q0 exp(r / beta) is at least 0.9999.

Closed form: half the samples even with r = 1, half odd with r = 0, so the predicted even share is
1 / (1 + exp(-1 / beta)); it reaches 0.9999 for beta <= 1 / ln(9999) = 0.1086, so the grid's 0.1 is chosen.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LABELS = np.arange(1000) % 10  # every class 100 times
REWARD = np.isin(LABELS, (0, 2, 4, 6, 8)).astype(np.float64)


def test_mnist_rule_on_the_closed_form():
    bench = load("mnist_paper")
    beta, table = bench.frontier_target(torch.from_numpy(REWARD), torch.from_numpy(LABELS))
    assert beta == 0.1
    for row in table:
        even = 1 / (1 + math.exp(-1 / row["beta"]))
        assert row["even_share"] == pytest.approx(even, rel=1e-12)
        # five even classes share `even`, five odd ones the rest: H = -sum p log p with 0 log 0 = 0
        expect = -sum(p * math.log(p / 5) for p in (even, 1 - even) if p > 0)
        assert row["class_entropy"] == pytest.approx(expect, rel=1e-9)


def test_digits_rule_reads_the_classifier_the_same_way():
    """even_digits.py takes r and the labels from the classifier's probabilities: a classifier that is certain
    of every label gives the same choice as the closed form."""
    bench = load("even_digits")

    class Certain:
        def predict_proba(self, x):
            return np.eye(10)[LABELS[: len(x)]]

    beta, table = bench.frontier_target(np.zeros((1000, 64)), Certain())
    assert beta == 0.1 and [row["beta"] for row in table] == [0.2, 0.1, 0.05, 0.02]


def test_a_finished_run_is_one_trained_to_its_own_steps_and_closed(tmp_path):
    bench = load("mnist_paper")
    run = tmp_path / "run"
    assert not bench.finished(run)
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"steps_done": 40, "settings": {"train": {"steps": 50}}}))
    assert not bench.finished(run)  # stopped early: not reused as a result
    (run / "config.json").write_text(json.dumps({"steps_done": 50, "settings": {"train": {"steps": 50}}}))
    assert not bench.finished(run)  # the last checkpoint is written, final_metrics.json not yet
    (run / "final_metrics.json").write_text("{}")
    assert bench.finished(run) and load("even_digits").finished(run)


def test_the_optimum_curves_on_the_closed_form(tmp_path):
    """benchmarks/frontier_plot.py: even samples with P(even) = 0.9, odd ones with 0.1.  With r = P(even) the
    predicted even share is 1 / (1 + exp(-0.8 / beta)); with r = log P(even) it is 1 / (1 + 9^(-1 / beta)) (beta = 1:
    the classifier's own posterior, 0.9).  The plot is written."""
    plot = load("frontier_plot")
    p_even = np.where(np.isin(LABELS, (0, 2, 4, 6, 8)), 0.9, 0.1)
    curves = plot.optimum_curves(p_even, LABELS)
    assert [r["beta"] for r in curves["P(even)"]] == list(plot.SOFT_BETAS)
    for row in curves["P(even)"]:
        assert row["even_share"] == pytest.approx(1 / (1 + math.exp(-0.8 / row["beta"])), rel=1e-9)
    for row in curves["log P(even)"]:
        assert row["even_share"] == pytest.approx(1 / (1 + 9 ** (-1 / row["beta"])), rel=1e-9)
    plot.save_frontier_plot(tmp_path / "f.png", curves, {"a run": (0.99, 1.6)}, title="t")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("alphas, problem", [("", "--alphas is empty"), ("0,a", "give numbers separated by commas")])
def test_even_digits_refuses_bad_alphas_before_any_work(tmp_path, alphas, problem):
    """A bad --alphas gets one line and exit status 2 before the script pretrains, trains or writes anything
    (the base folder does not exist, so any work would start by pretraining into it)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "even_digits.py"), "--alphas", alphas,
                           "--base", str(tmp_path / "base"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert problem in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
