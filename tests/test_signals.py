"""SIGTERM / SIGINT during a slow reward: the call is cut short, the last completed step is checkpointed (and
resumes bit for bit), and a second Ctrl-C exits at once leaving the last checkpoint as it was.

The reward sleeps for two minutes at a chosen call, after writing a marker file; the signal is sent once the
marker is there.  The waits below are generous deadlines (a run that ignored the signal would sleep on past
them), not measurements of how fast the code is.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import cli_env, run_cli  # noqa: E402

from flowsteer.interrupts import Abort, StepInterrupted, StopSignals, interruptible  # noqa: E402

DEADLINE = 60  # seconds a stopped run may take to exit, start-up excluded (the reward would sleep 120)

SLEEPY = '''
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
A = torch.tensor([1.5, 0.0])
calls = {"train": 0, "eval": 0}


def reward(x):
    r = -((x - A) ** 2).sum(1)
    plan = HERE / "sleep-at"  # "train N" or "eval N": sleep in the N-th call of that kind, once
    if plan.exists() and not (HERE / "asleep").exists():
        kind, n = plan.read_text().split()
        calls["eval" if x.shape[0] == 48 else "train"] += 1
        if calls[kind] == int(n):
            (HERE / "asleep").write_text("")
            try:
                time.sleep(120)
            except BaseException:
                if (HERE / "stubborn").exists():  # swallow the first interruption and sleep on
                    (HERE / "swallowed").write_text("")
                    time.sleep(120)
                raise
    return r
'''


def _command(base: Path, reward: Path, out: Path) -> list[str]:
    return ["align", "--base", str(base), "--reward", f"python:{reward}:reward", "--steps", "12", "--batch-size", "16",
            "--eval-every", "4", "--eval-samples", "48", "--checkpoint-every", "2", "--log-every", "2", "--quiet",
            "--out", str(out)]


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 240  # start-up and the steps before the slow call
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


@pytest.fixture
def sleepy(tmp_path):
    folder = tmp_path / "reward"
    folder.mkdir()
    (folder / "sleepy.py").write_text(SLEEPY)
    return folder


# (signal, where the reward sleeps, the step of the checkpoint the stop leaves)
STOPS = [
    (signal.SIGTERM, "train 6", 5),  # in the 6th step: steps 0-4 done, checkpoint-5 is new (regular ones: 2, 4)
    (signal.SIGINT, "eval 2", 4),  # in the evaluation at step 4, before that step's regular checkpoint
]


@pytest.mark.parametrize("sig, plan, step", STOPS, ids=["sigterm-in-a-step", "sigint-in-an-evaluation"])
def test_a_stop_signal_during_a_slow_reward_checkpoints_and_resumes_exactly(sig, plan, step, moons_run, sleepy,
                                                                              tmp_path):
    reward = sleepy / "sleepy.py"
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = run_cli(*_command(moons_run, reward, whole))
    assert proc.returncode == 0, proc.stderr
    (sleepy / "sleep-at").write_text(plan)
    p = subprocess.Popen([sys.executable, "-m", "flowsteer", *_command(moons_run, reward, stopped)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    _wait_for(sleepy / "asleep", p)
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"the run did not stop within {DEADLINE} s of {sig.name}")
    assert p.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"interrupted by {sig.name} at step {step}; saved a checkpoint" in lines[0] and "--resume" in lines[0]
    assert (stopped / "latest").read_text().strip() == f"checkpoint-{step}"
    proc = run_cli(*_command(moons_run, reward, stopped), "--resume")  # "asleep" exists: no more sleeping
    assert proc.returncode == 0, proc.stderr
    assert _files(whole)["model.safetensors"] == _files(stopped)["model.safetensors"]  # bit for bit
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 4, 8, 12]  # a cut-short one is made up


def test_a_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint(moons_run, sleepy, tmp_path):
    """The reward swallows the first interruption and sleeps on; the second Ctrl-C ends the process anyway."""
    reward, out = sleepy / "sleepy.py", tmp_path / "run"
    (sleepy / "sleep-at").write_text("train 6")
    (sleepy / "stubborn").write_text("")
    p = subprocess.Popen([sys.executable, "-m", "flowsteer", *_command(moons_run, reward, out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    _wait_for(sleepy / "asleep", p)
    before = _files(out)
    assert (out / "latest").read_text().strip() == "checkpoint-4"
    p.send_signal(signal.SIGINT)
    _wait_for(sleepy / "swallowed", p)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"the run did not exit within {DEADLINE} s of the second SIGINT")
    assert p.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted again by SIGINT" in lines[0] and "--resume" in lines[0], lines[0]
    assert _files(out) == before  # no new checkpoint, the last one byte for byte as it was


def test_regions_raise_only_when_armed():
    """The mechanism in this process: a signal inside an armed region cuts it short; unarmed, it only flags."""
    stops, reached, previous = StopSignals(), [], signal.getsignal(signal.SIGINT)
    assert stops.install()
    try:
        with interruptible():  # not armed: the signal is recorded, the region runs to its end
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            reached.append("unarmed")
        assert stops.received == signal.SIGTERM and reached == ["unarmed"]
        stops.received, stops.armed = 0, True
        with pytest.raises(StepInterrupted):
            with interruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                reached.append("armed")  # never: the sleep is cut short
        with pytest.raises(Abort) as info:  # a second signal, wherever it lands
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
            reached.append("second")
        assert info.value.exit_code == 130 and reached == ["unarmed"]
    finally:
        stops.uninstall()
    assert signal.getsignal(signal.SIGINT) is previous
    with interruptible():  # no Trainer: inert
        reached.append("inert")
    assert reached == ["unarmed", "inert"]


def test_a_slow_rollout_is_cut_short(moons_run):
    """ORW's rollout is a region too: a stop signal during a slow network call ends it at once."""
    import torch

    from flowsteer.methods.orw import AlignConfig, RewardWeightedObjective
    from flowsteer.runs import load_run

    base, reached = load_run(moons_run), []

    class Slow(torch.nn.Module):
        def forward(self, t, x, **cond):
            if not reached:  # the first network call is the slow one
                reached.append("called")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                reached.append("slept through")
            return base.model(t, x, **cond)

    objective = RewardWeightedObjective(reference=base.model, reward=lambda x: x[:, 0], decode=base.decode,
                                        config=AlignConfig(base=str(moons_run), reward="target:1,0"), shape=base.shape,
                                        sigma=base.sigma, generator=torch.Generator())
    stops = StopSignals()
    stops.install()
    try:
        stops.armed = True
        with pytest.raises(StepInterrupted):
            objective._rollout(Slow(), 4, torch.Generator().manual_seed(0))
    finally:
        stops.uninstall()
    assert stops.received == signal.SIGTERM and reached == ["called"]
