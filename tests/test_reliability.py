"""Reliability: SIGKILL + resume is bitwise exact, SIGTERM checkpoints, guarded steps, reward timeouts."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import cli, cli_env, run_cli
from test_cli import assert_user_error
from flowsteer.config import TrainConfig
from flowsteer.errors import TrainingStopped
from flowsteer.checkpoints import RunWriter
from flowsteer.runs import load_run
from flowsteer.training import StepOutput, Trainer


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flowsteer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())


def _latest_step(out: Path) -> int:
    try:
        return int((out / "latest").read_text().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return -1


def _commands(kind: str, base: Path) -> list[str]:
    common = ["--steps", "120", "--batch-size", "64", "--checkpoint-every", "10", "--log-every", "10", "--quiet"]
    if kind == "pretrain":
        return ["pretrain", "--data", "moons", *common]
    if kind == "align":  # the lagged policy (refresh every 25) and the dual variable of --w2-budget are resumed too
        return ["align", "--base", str(base), "--reward", "target:1.5,0.0", "--refresh-every", "25",
                "--w2-budget", "0.05", "--eval-every", "40", "--eval-samples", "32", *common]
    return ["adapt", "--base", str(base), "--target", "moons", "--method", "gft", "--stages", "3",
            "--eval-every", "40", "--coupling", "ot", *common]


@pytest.mark.parametrize("kind", ["pretrain", "align", "adapt"])
def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(kind, moons_run, tmp_path):
    """Kill -9 somewhere after a random checkpoint (seeded choice), resume, compare with an uninterrupted run."""
    cmd = _commands(kind, moons_run)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = run_cli(*cmd, "--out", str(whole))
    assert proc.returncode == 0, proc.stderr
    rng = random.Random(f"sigkill-{kind}")
    target = rng.randrange(20, 100, 10)
    p = _popen(*cmd, "--out", str(killed))
    deadline = time.time() + 240
    while _latest_step(killed) < target and p.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.05))  # land somewhere between checkpoints
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = _latest_step(killed)
    assert 0 < stopped_at < 120
    proc = run_cli(*cmd, "--out", str(killed), "--resume")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"weights differ (killed after {stopped_at})"
    sa = torch.load(whole / "checkpoint-120" / "trainer_state.pt", weights_only=False)
    sb = torch.load(killed / "checkpoint-120" / "trainer_state.pt", weights_only=False)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    if kind == "align":
        assert sa["objective"]["alpha"] == sb["objective"]["alpha"]  # the dual variable
    # the metrics log has no duplicate steps after the resume
    steps = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert steps == sorted(set(steps))
    assert len(list(killed.glob("checkpoint-*"))) == 2  # keep-last default


def test_sigterm_during_align_leaves_a_loadable_checkpoint(moons_run, tmp_path):
    out = tmp_path / "run"
    cmd = ["align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--steps", "5000", "--batch-size", "64",
           "--eval-every", "0", "--quiet"]
    p = _popen(*cmd, "--out", str(out))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
        time.sleep(0.01)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted by SIGTERM at step" in lines[0] and "--resume" in lines[0], err
    step = _latest_step(out)
    assert 0 < step < 5000
    run = load_run(out)  # the run folder loads
    assert run.config["steps_done"] == step
    assert torch.isfinite(run.sample(8, steps=4).x).all()
    state = torch.load(out / f"checkpoint-{step}" / "trainer_state.pt", weights_only=False)
    assert state["step"] == step and "policy" in state["objective"]


class _Flaky:
    """A least-squares objective whose loss is NaN (or whose gradient is inf) at chosen steps."""

    def __init__(self, nan_steps=(), inf_grad_steps=(), nan_from=None):
        self.nan_steps, self.inf_grad_steps, self.nan_from = set(nan_steps), set(inf_grad_steps), nan_from

    def loss(self, model, *, step, generator):
        x = torch.randn(16, 2, generator=generator)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        if step in self.nan_steps or (self.nan_from is not None and step >= self.nan_from):
            loss = loss * float("nan")
        if step in self.inf_grad_steps:
            s = sum(p.sum() for p in model.parameters())
            loss = loss + torch.sqrt(s - s.detach())  # value 0, gradient inf
        return StepOutput(loss=loss)


def test_non_finite_steps_are_skipped_counted_and_logged(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    snapshots = {}
    cfg = TrainConfig(steps=10, batch_size=16, warmup_steps=0, ema_decay=0.0, log_every=1, checkpoint_every=2)
    writer = RunWriter(tmp_path / "run", {"method": "test"})

    class Spy(_Flaky):
        def loss(self, m, *, step, generator):
            snapshots[step] = m.weight.detach().clone()
            return super().loss(m, step=step, generator=generator)

    trainer = Trainer(model, Spy(nan_steps=(3,), inf_grad_steps=(6,)), cfg, generator=torch.Generator().manual_seed(0),
                      checkpoint=writer.checkpoint, log=writer.log)
    result = trainer.fit()
    assert result.skipped_steps == 2 and trainer.step == 10
    assert torch.equal(snapshots[3], snapshots[4]) and torch.equal(snapshots[6], snapshots[7])  # no update
    assert not torch.equal(snapshots[4], snapshots[5])  # training went on
    assert torch.isfinite(model.weight).all()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skips = [r for r in records if r["kind"] == "skip"]
    assert [(r["step"], r["reason"].split(" (")[0]) for r in skips] == [(3, "non-finite loss"), (6, "non-finite gradient")]


def test_too_many_bad_steps_in_a_row_stop_and_keep_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    cfg = TrainConfig(steps=50, batch_size=16, warmup_steps=0, ema_decay=0.0, log_every=5, checkpoint_every=4,
                      max_bad_steps=3)
    out = tmp_path / "run"
    writer = RunWriter(out, {"method": "test"})
    trainer = Trainer(model, _Flaky(nan_from=9), cfg, generator=torch.Generator().manual_seed(0),
                      checkpoint=writer.checkpoint, log=writer.log)
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row") as info:
        trainer.fit()
    assert info.value.exit_code == 3
    assert (out / "latest").read_text().strip() == "checkpoint-8"  # the last good one, untouched
    state = torch.load(out / "checkpoint-8" / "trainer_state.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_reward_timeout_fails_with_a_clear_message(moons_run, tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef reward(x):\n    time.sleep(5)\n    return x[:, 0]\n")
    proc = cli("align", "--base", str(moons_run), "--reward", f"python:{slow}:reward", "--out", str(tmp_path / "a"),
                   "--reward-timeout", "0.5", "--steps", "5", "--batch-size", "32", "--quiet")
    assert_user_error(proc, "took longer than --reward-timeout 0.5 s on")


def test_resume_auto_and_named_checkpoint(moons_run, tmp_path):
    out = tmp_path / "run"
    cmd = ["pretrain", "--data", "moons", "--steps", "40", "--batch-size", "64", "--checkpoint-every", "10",
           "--keep-last", "3", "--quiet", "--out", str(out)]
    assert cli(*cmd).returncode == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]
    assert_user_error(cli(*cmd, "--resume", "checkpoint-10"), "no such checkpoint", "checkpoint-20")
    proc = cli(*cmd, "--resume", "checkpoint-20")
    assert proc.returncode == 0, proc.stderr
    assert (out / "latest").read_text().strip() == "checkpoint-40"
