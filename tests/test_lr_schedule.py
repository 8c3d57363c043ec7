"""``--lr-schedule``: the learning rate after warm-up, constant or decayed to 0 at ``--steps``.

The factor is checked against its closed forms (those of ``transformers.get_cosine_schedule_with_warmup`` and its
linear twin after warm-up), the Trainer's optimiser is checked to use it step by step, a cosine run resumed
mid-decay is bitwise the uninterrupted one, and a resume may change the schedule (applied and recorded).
"""

import json
import math

import pytest
import torch
from torch import nn

from flowsteer.config import TrainConfig
from flowsteer.train_state import lr_factor
from flowsteer.training import StepOutput, Trainer


def test_warm_up_is_the_same_for_every_schedule():
    for schedule in ("constant", "cosine", "linear"):
        assert [lr_factor(k, warmup=4, steps=20, schedule=schedule) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_constant_is_the_old_rule():
    """The default reproduces the rule the Trainer had before the option: ``min(1, (k + 1) / warmup)``."""
    for warm in (0, 1, 7):
        for k in range(30):
            old = min(1.0, (k + 1) / warm) if warm > 0 else 1.0
            assert lr_factor(k, warmup=warm, steps=30) == old


@pytest.mark.parametrize("warm,steps", [(0, 100), (10, 110), (50, 51)])
def test_decays_follow_their_closed_forms(warm, steps):
    span = steps - warm
    for k in range(warm, steps):
        p = (k - warm) / span
        assert lr_factor(k, warmup=warm, steps=steps, schedule="cosine") == pytest.approx(
            0.5 * (1 + math.cos(math.pi * p)), abs=1e-15)
        assert lr_factor(k, warmup=warm, steps=steps, schedule="linear") == pytest.approx(1 - p, abs=1e-15)
    # the first decayed step runs at the full rate; the middle of the decay at half of it (both shapes)
    assert lr_factor(warm, warmup=warm, steps=steps, schedule="cosine") == 1.0
    if span % 2 == 0:
        mid = warm + span // 2
        assert lr_factor(mid, warmup=warm, steps=steps, schedule="cosine") == pytest.approx(0.5)
        assert lr_factor(mid, warmup=warm, steps=steps, schedule="linear") == pytest.approx(0.5)
    # cosine stays above the line in the first half and below it in the second
    q1, q3 = warm + span // 4, warm + 3 * span // 4
    if span >= 8:
        assert lr_factor(q1, warmup=warm, steps=steps, schedule="cosine") > \
            lr_factor(q1, warmup=warm, steps=steps, schedule="linear")
        assert lr_factor(q3, warmup=warm, steps=steps, schedule="cosine") < \
            lr_factor(q3, warmup=warm, steps=steps, schedule="linear")
    # at and past --steps the rate is 0 (a resume with fewer steps is refused elsewhere)
    for schedule in ("cosine", "linear"):
        assert lr_factor(steps, warmup=warm, steps=steps, schedule=schedule) == pytest.approx(0.0, abs=1e-15)
        assert lr_factor(steps + 5, warmup=warm, steps=steps, schedule=schedule) == pytest.approx(0.0, abs=1e-15)


def test_the_rate_is_0_at_steps_even_when_warm_up_fills_the_run():
    for schedule in ("cosine", "linear"):
        assert lr_factor(9, warmup=10, steps=10, schedule=schedule) == 1.0  # the last warm-up step
        assert lr_factor(10, warmup=10, steps=10, schedule=schedule) == 0.0
    assert lr_factor(10, warmup=10, steps=10) == 1.0  # constant stays constant


def test_an_unknown_schedule_is_a_config_problem():
    problems = TrainConfig(lr_schedule="step").validate()
    assert any("--lr-schedule" in p and "cosine" in p for p in problems), problems
    with pytest.raises(ValueError):
        lr_factor(5, warmup=0, steps=10, schedule="step")


class _Quadratic:
    """A loss whose step needs no data: ``||w||^2`` of a one-parameter model."""

    def loss(self, model, *, step, generator):
        return StepOutput(loss=(model.w ** 2).sum(), metrics={})


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_the_trainer_steps_at_the_scheduled_rate(schedule):
    """The rate each optimiser step used, read from the optimiser, is ``lr * lr_factor(k)`` for every step."""
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(3))
    cfg = TrainConfig(steps=12, batch_size=1, lr=0.1, warmup_steps=3, lr_schedule=schedule, ema_decay=0.0,
                      grad_clip=0.0)
    trainer = Trainer(model, _Quadratic(), cfg, generator=torch.Generator().manual_seed(0))
    used = []
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)
    trainer.optimizer.step = step
    trainer.fit()
    want = [0.1 * lr_factor(k, warmup=3, steps=12, schedule=schedule) for k in range(12)]
    assert used == pytest.approx(want, rel=1e-12, abs=1e-15)
    if schedule != "constant":
        assert used[-1] < 0.1 / 8  # decayed: the last of 9 decaying steps runs at 1/9 (linear) or less


def test_a_resumed_cosine_run_is_bitwise_the_uninterrupted_one(tmp_path, monkeypatch):
    """The decay continues from the checkpoint's step: restarting it (or running it at the full rate) would
    change the weights of the last 35 steps."""
    from conftest import cli
    from test_resume_settings import same_weights, whole_and_resumed

    cmd = ["pretrain", "--data", "moons", "--lr", "5e-3", "--lr-schedule", "cosine", "--width", "32", "--steps", "60",
           "--batch-size", "64", "--warmup-steps", "5", "--checkpoint-every", "20", "--log-every", "5", "--quiet"]
    whole, out = whole_and_resumed(cmd, tmp_path, monkeypatch, at=25)
    same_weights(whole, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    for step in (30, 45, 60):  # logged once the schedule has moved past the step: the next step's rate
        assert lrs[step] == pytest.approx(5e-3 * lr_factor(step, warmup=5, steps=60, schedule="cosine"), rel=1e-9)

    # a resume may change the schedule (and --steps): applied from the checkpoint on, recorded, and the rate
    # is the new schedule's over the new length
    proc = cli("pretrain", "--out", str(out), "--resume", "--steps", "80", "--lr-schedule", "linear",
               "--progress", "log")
    assert proc.returncode == 0, proc.stderr
    assert "--resume: --lr-schedule cosine -> linear (applied from step 60 on and recorded in config.json)" \
        in proc.stderr.splitlines(), proc.stderr
    saved = json.loads((out / "config.json").read_text())["settings"]["train"]
    assert saved["lr_schedule"] == "linear" and saved["steps"] == 80
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[70] == pytest.approx(5e-3 * lr_factor(70, warmup=5, steps=80, schedule="linear"), rel=1e-9)
