"""Device discipline, precision and their bad inputs (issue 13), checked on the CPU.

With ``torch.set_default_device("meta")`` any tensor created without the run's device lands on the meta
device and fails as soon as it meets a real tensor: the CPU catches what a GPU would (a stray CPU tensor
in a CUDA run).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flowsteer import AdaptConfig, AlignConfig, PretrainConfig, TrainConfig, adapt, align, load_run, pretrain
from flowsteer.cli import main
from flowsteer.config import align_train_defaults


def cli(argv: list[str]) -> int:
    """The command line in this process (argparse's own errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture
def meta_default_device():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def test_the_meta_trap_catches_a_tensor_made_without_a_device(meta_default_device):
    """The control: a tensor made without ``device=`` is on meta and cannot meet the run's CPU tensors."""
    stray = torch.randn(3)
    assert stray.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        (stray + torch.ones(3, device="cpu")).tolist()


def test_pretrain_align_adapt_create_every_tensor_on_the_run_device(tmp_path, meta_default_device):
    train = TrainConfig(steps=4, batch_size=32, log_every=2, checkpoint_every=2, device="cpu")
    pretrain(PretrainConfig(data="moons", train=train), tmp_path / "base", progress="quiet")
    aligned = align(AlignConfig(base=str(tmp_path / "base"), reward="target:1,0", refresh_every=2, rollout_steps=2,
                                eval_every=2, eval_samples=16, eval_steps=2, w2_budget=0.1,
                                train=dataclasses.replace(align_train_defaults(), steps=4, batch_size=32, device="cpu")),
                    tmp_path / "align", progress="quiet")
    assert aligned.config["final"]["final_alpha"] >= 0  # the lagged policy, the W2 term and its dual ran
    adapted = adapt(AdaptConfig(base=str(tmp_path / "base"), target="circles", coupling="ot", stages=2, eval_every=4,
                                eval_samples=32, eval_nfes=(1, 2),
                                train=TrainConfig(steps=12, batch_size=32, warmup_steps=1, device="cpu")),
                    tmp_path / "adapt", progress="quiet")
    assert adapted.config["trained_on"] == "cpu"


def test_bf16_autocast_keeps_float32_master_weights_and_matches_fp32(tmp_path, moons_run):
    """bf16 autocasts the forward passes only: weights, Adam's moments and the EMA stay float32, and a short
    align run ends near the fp32 one (reward means within 0.15 on this 2-D task; measured 0.02)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        train = dataclasses.replace(align_train_defaults(), steps=40, batch_size=128, precision=precision,
                                    ema_decay=0.9, device="cpu")
        runs[precision] = align(AlignConfig(base=str(moons_run), reward="target:1.5,0", refresh_every=10,
                                            rollout_steps=4, eval_every=0, eval_samples=256, train=train),
                                tmp_path / precision, progress="quiet")
    assert all(p.dtype == torch.float32 for p in runs["bf16"].model.parameters())
    state = torch.load(tmp_path / "bf16" / "checkpoint-40" / "trainer_state.pt", weights_only=False)
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert all(v.dtype == torch.float32 for v in state["ema"].values())
    f32, b16 = runs["fp32"].config["final"]["reward_mean"], runs["bf16"].config["final"]["reward_mean"]
    base = -((load_run(moons_run).sample(256, seed=0).x - torch.tensor([1.5, 0.0])) ** 2).sum(1).mean().item()
    assert f32 > base and b16 > base  # both learned
    assert abs(f32 - b16) < 0.15, (f32, b16)


def test_a_run_trained_elsewhere_loads_on_the_cpu(tmp_path, moons_run):
    """The device is recorded but never needed to load: a config saying cuda:1 still loads and samples here."""
    import shutil

    copy = tmp_path / "gpu-run"
    shutil.copytree(moons_run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["trained_on"] = "cuda:1"
    (copy / "config.json").write_text(json.dumps(cfg))
    a, b = load_run(copy).sample(16, seed=3).x, load_run(moons_run).sample(16, seed=3).x
    assert torch.equal(a, b)


BAD = [
    (["--device", "cuda"], "no CUDA device"),
    (["--device", "cuda:7"], "CUDA"),
    (["--device", "tpu"], "--device"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
    (["--precision", "fp8"], "invalid choice"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_device_options_get_one_line_and_write_nothing(tmp_path, capsys, extra, needle):
    if "cuda" in extra[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    rc = cli(["pretrain", "--data", "moons", "--out", str(out), "--steps", "2", "--quiet", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_compile_where_it_is_unavailable_is_refused(tmp_path, capsys, monkeypatch):
    import flowsteer.devices

    monkeypatch.setattr(flowsteer.devices, "compile_available", lambda: False)
    rc = cli(["pretrain", "--data", "moons", "--out", str(tmp_path / "run"), "--steps", "2", "--compile", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "torch.compile is not available" in err[0], err
    assert not (tmp_path / "run").exists()


def test_gradient_checkpointing_needs_a_diffusers_model(tmp_path, capsys):
    rc = cli(["pretrain", "--data", "moons", "--out", str(tmp_path / "run"), "--steps", "2",
               "--gradient-checkpointing", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "--gradient-checkpointing works with diffusers models" in err[0], err
