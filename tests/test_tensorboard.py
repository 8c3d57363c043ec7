"""`--log tensorboard`: the same scalars as metrics.jsonl, as TensorBoard events; resume purges the dead tail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli

pytest.importorskip("tensorboard")


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    out = tmp_path / "run"
    r = cli("pretrain", "--data", "moons", "--out", str(out), "--steps", "20", "--batch-size", "64", "--log-every", "5",
            "--log", "tensorboard", "--quiet")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [rec for rec in records if rec["kind"] == "train"]
    events = scalars(out)
    assert [s for s, _ in events["train/loss"]] == [rec["step"] for rec in train] == [5, 10, 15, 20]
    for (step, value), rec in zip(events["train/loss"], train):
        assert value == pytest.approx(rec["loss"], rel=1e-6)
    assert "train/grad_norm" in events and "train/lr" in events


def test_tensorboard_without_out_is_refused():
    from flowsteer.config import TrainConfig
    from flowsteer.errors import ConfigError
    from flowsteer.methods.pretrain import PretrainConfig, pretrain

    with pytest.raises(ConfigError, match="give --out"):
        pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=2, batch_size=8, log="tensorboard")), None,
                 progress="quiet")
    assert "--log must be one of" in TrainConfig(log="wandb").validate()[0]
