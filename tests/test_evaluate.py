"""`flowsteer evaluate`: determinism, internal consistency, closed-form checks and bad input."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import cli
from test_cli import assert_user_error
from flowsteer.evaluation import EvaluationConfig, evaluate
from flowsteer.metrics import wasserstein2
from flowsteer.runs import load_run


def test_same_seed_gives_identical_json_bytes(moons_run, tmp_path):
    args = ["evaluate", "--model", str(moons_run), "--reward", "target:1.5,0.0", "--reference", str(moons_run),
            "--target", "moons", "--n", "300", "--nfe", "1,4,20", "--seed", "3"]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for out, seed in ((a, "3"), (b, "3"), (c, "4")):
        proc = cli(*args[:-1], seed, "--json", str(out))
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()  # the seed matters
    result = json.loads(a.read_text())
    assert [row["nfe"] for row in result["per_nfe"]] == [1, 4, 20]
    assert {"reward_spec", "reference_run", "target_spec", "metrics", "per_nfe"} <= set(result)
    assert {"reward_mean", "pairwise_distance", "w2_to_reference", "w2_to_target", "fd_to_target",
            "path_length"} <= set(result["metrics"])


def test_figures_agree_with_direct_computation(moons_run):
    """Reference = the run itself gives W2 = 0 exactly (shared noise); the target W2 matches a direct POT call."""
    res = evaluate(EvaluationConfig(model=str(moons_run), reward="target:1.5,0.0", reference=str(moons_run),
                                    target="moons", n=256, nfes=(2, 10), seed=0))
    assert all(row["w2_to_reference"] == pytest.approx(0.0, abs=1e-6) for row in res["per_nfe"])
    # rebuild the same samples by hand: noise from the seed, Euler with 10 steps
    run = load_run(moons_run)
    x0 = torch.randn((256, 2), generator=torch.Generator().manual_seed(0))
    from flowsteer.solvers import integrate

    x = run.normalizer.decode(integrate(run.model, x0, solver="euler", steps=10).x)
    r = -((x - torch.tensor([1.5, 0.0])) ** 2).sum(1)
    assert res["metrics"]["reward_mean"] == pytest.approx(float(r.mean()), rel=1e-5)
    assert res["metrics"]["reward_q50"] == pytest.approx(float(r.double().median()), rel=1e-2)
    m = res["metrics"]
    assert m["reward_min"] <= m["reward_q10"] <= m["reward_q50"] <= m["reward_q90"] <= m["reward_max"]
    from flowsteer.data import load_data

    held = load_data("moons", normalize="none").heldout.x
    held = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(2))[:256]]
    assert res["metrics"]["w2_to_target"] == pytest.approx(wasserstein2(x, held), rel=1e-6)
    d = torch.cdist(x.double(), x.double())
    assert res["metrics"]["pairwise_distance"] == pytest.approx(float(d.sum() / (256 * 255)), rel=1e-6)


def test_class_histogram_for_classifier_rewards(tmp_path):
    """A classifier reward adds the class histogram; its entropy is -sum p ln p and the reward is P(even)."""
    from flowsteer import PretrainConfig, TrainConfig, pretrain

    run_dir = tmp_path / "digits"
    pretrain(PretrainConfig(data="digits", train=TrainConfig(steps=100, log_every=50)), run_dir, progress="quiet")
    res = evaluate(EvaluationConfig(model=str(run_dir), reward="even-digits", n=200, nfes=(4,)))
    hist = np.array(res["metrics"]["class_histogram"])
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    nz = hist[hist > 0]
    assert res["metrics"]["class_entropy"] == pytest.approx(float(-(nz * np.log(nz)).sum()))
    assert res["metrics"]["top_class_share"] == pytest.approx(hist.max())
    assert 0.0 <= res["metrics"]["reward_mean"] <= 1.0
    assert math.isfinite(res["metrics"]["path_length"])


def test_evaluate_bad_inputs(moons_run, tmp_path):
    out = tmp_path / "e.json"
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--nfe", "0,4", "--json", str(out)), "--nfe", ">= 1")
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--nfe", "a", "--json", str(out)), "whole numbers")
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--json", str(tmp_path / "e.txt")), ".json")
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--target", "digits", "--json", str(out)),
                      "shape (1, 8, 8)")
    assert_user_error(cli("evaluate", "--model", str(tmp_path), "--json", str(out)), "config.json")
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--n", "1", "--json", str(out)), "--n")
    assert_user_error(cli("evaluate", "--model", str(moons_run), "--reward", "nope", "--json", str(out)), "nope")
    assert not out.exists()
