"""`flowsteer align` through the CLI: runs, sweeps, the W2 budget, and every bad input of issue 3."""

import json

import numpy as np
import pytest

from conftest import cli
from test_cli import assert_user_error

FAST = ["--steps", "6", "--batch-size", "32", "--eval-samples", "32", "--eval-every", "3", "--rollout-steps", "2",
        "--refresh-every", "3", "--quiet"]


@pytest.fixture
def rewards(tmp_path):
    (tmp_path / "rew.py").write_text(
        "import torch\n"
        "def nan_some(x):\n    r = -(x ** 2).sum(1)\n    r[:3] = float('nan')\n    return r\n"
        "def boom(x):\n    raise ZeroDivisionError('my reward broke')\n"
        "def short(x):\n    return [0.0] * (x.shape[0] - 1)\n"
    )
    return tmp_path / "rew.py"


def test_align_run_loads_like_any_run(moons_run, tmp_path):
    out = tmp_path / "a"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "align" and cfg["settings"]["alpha"] == 0.15 and cfg["steps_done"] == 6
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert {"reward_mean", "reward_std", "reward_max", "pairwise_distance", "w2_to_reference"} <= set(evals[-1])
    assert (out / "reward_curve.png").exists()
    proc = cli("sample", "--model", str(out), "--n", "10", "--out", str(tmp_path / "s.npy"))
    assert proc.returncode == 0 and np.load(tmp_path / "s.npy").shape == (10, 2)


def test_sweep_and_budget(moons_run, tmp_path):
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--out", str(tmp_path / "sw"),
                   "--alpha", "0,1", *FAST)
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["alpha"] for p in sweep["points"]] == [0.0, 1.0]
    assert (tmp_path / "sw" / "pareto.png").exists() and (tmp_path / "sw" / "alpha-1" / "model.safetensors").exists()
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--out", str(tmp_path / "b"),
                   "--w2-budget", "0.001", *FAST[:-1])
    assert proc.returncode == 0, proc.stderr
    assert "alpha settled at" in proc.stdout
    final = json.loads((tmp_path / "b" / "final_metrics.json").read_text())
    assert final["final_alpha"] != 0.15  # the dual variable moved


def test_nan_reward_stops_with_count(moons_run, tmp_path, rewards):
    out = tmp_path / "n"
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", f"python:{rewards}:nan_some", "--out",
                              str(out), *FAST), "nan_some", "NaN or inf for 3 of 32 samples", "--on-bad-reward skip")
    assert not (out / "model.safetensors").exists()


def test_nan_reward_skipped_on_request(moons_run, tmp_path, rewards):
    out = tmp_path / "s"
    proc = cli("align", "--base", str(moons_run), "--reward", f"python:{rewards}:nan_some", "--out", str(out),
                   "--on-bad-reward", "skip", *FAST)
    assert proc.returncode == 0, proc.stderr
    train = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["w_max"]) for r in train)
    assert train[-1]["bad_rewards"] == 3.0
    assert json.loads((out / "final_metrics.json").read_text())["bad_rewards_skipped"] == 18  # 3 per step


def test_reward_that_raises_shows_its_exception(moons_run, tmp_path, rewards):
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", f"python:{rewards}:boom", "--out",
                              str(tmp_path / "x"), *FAST), "ZeroDivisionError: my reward broke", "rew.py:7")


def test_wrong_length_unknown_spec_and_bad_base(moons_run, tmp_path, rewards):
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", f"python:{rewards}:short", "--out",
                              str(tmp_path / "x"), *FAST), "one number per sample")
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", "aesthetic", "--out",
                              str(tmp_path / "y"), *FAST), "unknown reward 'aesthetic'")
    assert_user_error(cli("align", "--base", str(tmp_path), "--reward", "even-digits", "--out",
                              str(tmp_path / "z"), *FAST), "not a flowsteer run")
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--out",
                              str(tmp_path / "w"), "--method", "orw", "--alpha", "0.5", *FAST), "--method orw")
    assert_user_error(cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--out",
                              str(tmp_path / "v"), "--alpha", "0,-1", *FAST), "--alpha must be >= 0")
