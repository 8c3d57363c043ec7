"""flowsteer on a CUDA device: runs there, loads anywhere, resumes bitwise, every precision, compile, SDE sampling.

Marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is False::

    python -m pytest -q -m gpu tests/test_gpu.py      # about 2 minutes on an H100

Samples are compared across devices with TF32 off (``--precision fp32`` lets CUDA use TF32 matmuls, which
differ from the CPU's float32 at about 1e-3).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")]

FAST_ALIGN = ["--steps", "6", "--batch-size", "64", "--eval-samples", "64", "--eval-every", "3", "--rollout-steps", "4",
              "--refresh-every", "3", "--quiet"]
FAST_IMAGES = ["--steps", "4", "--batch-size", "8", "--eval-samples", "8", "--eval-every", "2", "--rollout-steps", "2",
               "--refresh-every", "2", "--quiet"]


@contextlib.contextmanager
def no_tf32():
    """Plain float32 matmuls on CUDA while comparing with the CPU (flowsteer's Trainer sets these flags)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def pretrain_cuda(out: Path | None, steps: int, *, train: dict | None = None, resume: bool | str = False,
                  **settings):
    """``pretrain`` on moons on the GPU (``settings``: PretrainConfig fields; ``train``: TrainConfig fields)."""
    from flowsteer import PretrainConfig, TrainConfig, pretrain

    train = TrainConfig(**{"steps": steps, "log_every": 5, "device": "cuda", **(train or {})})
    config = PretrainConfig(data="moons", train=train, **settings)
    return pretrain(config, out, progress="quiet", resume=resume)


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


@pytest.fixture(scope="module")
def cuda_base(tmp_path_factory):
    """A moons run pretrained on the GPU, the base of the align tests."""
    out = tmp_path_factory.mktemp("gpu") / "base"
    pretrain_cuda(out, 200, train={"batch_size": 256, "log_every": 50})
    return out


# --------------------------------------------------------------------------- (a) trained on CUDA, loads on the CPU

def test_cuda_run_loads_on_cpu_and_samples_the_same(tmp_path):
    from flowsteer import load_run

    out = tmp_path / "moons"
    ok(run_cli("pretrain", "--data", "moons", "--steps", "50", "--log-every", "10", "--device", "cuda", "--out", str(out),
               "--quiet"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trained_on"].startswith("cuda") and cfg["steps_done"] == 50
    ok(run_cli("sample", "--model", str(out), "--n", "256", "--seed", "3", "--device", "cuda", "--out",
               str(tmp_path / "cuda.npy"), "--quiet"))
    on_gpu = torch.from_numpy(np.load(tmp_path / "cuda.npy"))
    with no_tf32():
        gpu_run, cpu_run = load_run(out, device="cuda"), load_run(out, device="cpu")
        assert gpu_run.device.type == "cuda" and cpu_run.device.type == "cpu"
        in_process = gpu_run.sample(256, seed=3).x
        on_cpu = cpu_run.sample(256, seed=3).x
    assert in_process.device.type == "cuda" and on_cpu.device.type == "cpu"
    assert torch.isfinite(on_cpu).all() and on_cpu.shape == (256, 2)
    torch.testing.assert_close(in_process.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- (b) bitwise resume on the GPU

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_on_cuda_is_bitwise_exact(tmp_path, precision):
    settings = {"checkpoint_every": 10, "precision": precision, "batch_size": 256}
    full = pretrain_cuda(tmp_path / "full", 20, train=settings)
    pretrain_cuda(tmp_path / "split", 10, train=settings)  # stopped at checkpoint-10
    resumed = pretrain_cuda(tmp_path / "split", 20, train=settings, resume=True)
    shutil.copytree(tmp_path / "full", tmp_path / "again")  # continue the 20-step run again from its checkpoint-10
    again = pretrain_cuda(tmp_path / "again", 20, train=settings, resume="checkpoint-10")
    reference = full.model.state_dict()
    for other in (resumed, again):
        assert next(other.model.parameters()).device.type == "cuda"
        for k, v in reference.items():
            assert torch.equal(v, other.model.state_dict()[k]), k
    raw = {name: torch.load(tmp_path / name / "checkpoint-20" / "trainer_state.pt", weights_only=False,
                            map_location="cpu") for name in ("full", "split", "again")}
    for name in ("split", "again"):
        for part in ("model", "ema"):
            assert all(torch.equal(raw["full"][part][k], raw[name][part][k]) for k in raw["full"][part]), (name, part)
        assert raw[name]["step"] == 20
    assert [r["loss"] for r in train_records(tmp_path / "full")] == [r["loss"] for r in train_records(tmp_path / "split")]


# --------------------------------------------------------------------------- (c) align on the GPU

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_align_with_lagged_policy_and_w2_budget_on_cuda(cuda_base, tmp_path, precision):
    from flowsteer import load_run

    out = tmp_path / "aligned"
    proc = run_cli("align", "--base", str(cuda_base), "--reward", "target:1,0", "--method", "orw-w2",
                   "--w2-budget", "0.001", "--device", "cuda", "--precision", precision, "--out", str(out), *FAST_ALIGN)
    ok(proc)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trained_on"].startswith("cuda") and cfg["steps_done"] == 6
    assert cfg["settings"]["train"]["precision"] == precision
    final = json.loads((out / "final_metrics.json").read_text())
    assert math.isfinite(final["final_alpha"]) and final["final_alpha"] != 0.15  # the dual variable moved
    assert math.isfinite(final["w2_bound_running"])
    records = train_records(out)
    assert records and all(math.isfinite(r["loss"]) and math.isfinite(r["w2_bound"]) for r in records)
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [0, 3, 6]
    run = load_run(out, device="cpu")
    assert torch.isfinite(run.sample(16).x).all()


# --------------------------------------------------------------------------- (d) fp16 with the gradient scaler

def test_fp16_with_grad_scaler_trains_to_finite_weights(tmp_path):
    run = pretrain_cuda(tmp_path / "fp16", 20, train={"precision": "fp16", "batch_size": 256})
    assert all_finite(run.model)
    state = torch.load(tmp_path / "fp16" / "checkpoint-20" / "trainer_state.pt", weights_only=False, map_location="cpu")
    assert state["scaler"] is not None and math.isfinite(float(state["scaler"]["scale"])) and state["scaler"]["scale"] > 0
    assert all(math.isfinite(r["loss"]) for r in train_records(tmp_path / "fp16"))
    assert torch.isfinite(run.sample(64).x).all()


# --------------------------------------------------------------------------- (e) torch.compile

def test_compiled_pretrain_completes(tmp_path):
    from flowsteer import load_run

    out = tmp_path / "compiled"
    try:
        proc = run_cli("pretrain", "--data", "moons", "--steps", "6", "--log-every", "3", "--compile", "--device", "cuda",
                       "--out", str(out), "--quiet", timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("--compile took longer than 240 s to compile a 6-step run here")
    ok(proc)
    assert json.loads((out / "config.json").read_text())["settings"]["train"]["compile"] is True
    run = load_run(out, device="cuda")
    assert all_finite(run.model) and torch.isfinite(run.sample(64).x).all()


# --------------------------------------------------------------------------- (f) SDE sampling on the GPU

def test_euler_maruyama_sampling_on_cuda(tmp_path):
    from flowsteer import load_run

    out = tmp_path / "sde"
    run = pretrain_cuda(out, 30, sigma=0.2, train={"precision": "fp32-strict", "batch_size": 256})
    assert run.sigma == 0.2 and run.default_solver() == "euler-maruyama"
    with no_tf32():
        a = run.sample(256, solver="euler-maruyama", steps=20, seed=1).x
        b = run.sample(256, solver="euler-maruyama", steps=20, seed=1).x
        c = run.sample(256, solver="euler-maruyama", steps=20, seed=2).x
        on_cpu = load_run(out, device="cpu").sample(256, solver="euler-maruyama", steps=20, seed=1).x
    assert a.device.type == "cuda" and a.shape == (256, 2) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(a.cpu(), on_cpu, atol=1e-4, rtol=1e-4)  # the noise is drawn on the CPU: the same anywhere


# --------------------------------------------------------------------------- diffusers models and LoRA on the GPU

def test_lora_align_of_a_diffusers_unet_on_cuda(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from flowsteer import load_run
    from flowsteer.models.tiny import save_tiny_unet2d

    base = save_tiny_unet2d(tmp_path / "unet", channels=1, size=8)
    out = tmp_path / "aligned"
    ok(run_cli("align", "--base", f"diffusers:{base}", "--reward", "jpeg-compressibility", "--lora-rank", "2",
               "--w2-budget", "0.01", "--device", "cuda", "--precision", "bf16", "--out", str(out), *FAST_IMAGES))
    assert json.loads((out / "config.json").read_text())["model"]["lora"]["r"] == 2
    for device in ("cuda", "cpu"):
        x = load_run(out, device=device).sample(4, steps=4).x
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    """A tiny SD3 pipeline folder (transformer, VAE, two CLIP text encoders) and a tiny CLIP model."""
    for name in ("diffusers", "peft", "transformers", "tokenizers"):
        pytest.importorskip(name)
    from flowsteer.models.tiny import save_tiny_clip, save_tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("tiny")
    return {"sd3": save_tiny_sd3_pipeline(root / "sd3"), "clip": save_tiny_clip(root / "clip")}


def test_sd3_prompt_encodes_for_a_cuda_base(tiny_sd3):
    from flowsteer import load_base

    on_cpu = load_base(f"diffusers:{tiny_sd3['sd3']}", prompt="a red cat", device="cpu")
    on_gpu = load_base(f"diffusers:{tiny_sd3['sd3']}", prompt="a red cat", device="cuda")
    assert on_gpu.device.type == "cuda"
    for key, value in on_cpu.prompt_embeds.items():
        assert on_gpu.prompt_embeds[key].device.type == "cuda", key
        torch.testing.assert_close(on_gpu.prompt_embeds[key].cpu(), value, atol=1e-4, rtol=1e-4)


def test_sd3_latents_decode_through_the_vae_on_cuda(tiny_sd3):
    from flowsteer import load_base

    base = load_base(f"diffusers:{tiny_sd3['sd3']}", prompt="a red cat", device="cpu")  # the prompt encoded on the CPU
    base.model.to("cuda")
    base.prompt_embeds = {k: v.to("cuda") for k, v in base.prompt_embeds.items()}
    x = base.sample(2, steps=2).x  # latents on the GPU, decoded to images by the pipeline's VAE
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_sd3_lora_align_with_prompt_vae_and_clip_on_cuda(tiny_sd3, tmp_path):
    out = tmp_path / "aligned"
    ok(run_cli("align", "--base", f"diffusers:{tiny_sd3['sd3']}", "--prompt", "a red cat", "--lora-rank", "4", "--reward",
               f"clip:a red cat;contrast=a photo;model={tiny_sd3['clip']}", "--device", "cuda", "--precision", "bf16",
               "--out", str(out), *FAST_IMAGES))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["lora"]["r"] == 4 and cfg["trained_on"].startswith("cuda")
    ok(run_cli("sample", "--model", str(out), "--n", "4", "--steps", "4", "--device", "cuda", "--out",
               str(tmp_path / "s.npy"), "--quiet"))
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (4, 3, 16, 16) and np.isfinite(x).all()
