"""Real-model adapters (diffusers UNet2DModel, SD3), LoRA through peft, and the CLIP reward.

Every model is a tiny random-weight checkpoint built from a config, saved with the library's own
``save_pretrained`` and loaded back through the code path a user's real checkpoint takes (no download).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from conftest import cli  # noqa: E402

from flowsteer.models import build_model  # noqa: E402
from flowsteer.models.adapters import SD3Velocity, diffusers_model_spec  # noqa: E402
from flowsteer.models.lora import AdapterDisabled, add_lora, adapters_disabled, inner_module, lora_spec  # noqa: E402
from flowsteer.models.weights import swapped_weights, trainable_state_dict  # noqa: E402
from flowsteer.models.tiny import save_tiny_clip, save_tiny_sd3_pipeline, save_tiny_unet2d  # noqa: E402
from flowsteer.bases import load_base  # noqa: E402
from flowsteer.runs import load_adapter, load_run  # noqa: E402
from flowsteer.solvers import integrate  # noqa: E402

FAST = ["--steps", "4", "--batch-size", "8", "--eval-samples", "8", "--eval-every", "2", "--rollout-steps", "2",
        "--refresh-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"unet": save_tiny_unet2d(root / "unet"), "sd3": save_tiny_sd3_pipeline(root / "sd3"),
            "clip": save_tiny_clip(root / "clip")}


# --------------------------------------------------------------------------- time conventions


def test_sd3_euler_step_matches_the_pipeline_scheduler(tiny):
    """One flowsteer Euler step from t = 1 - s_i to 1 - s_{i+1} is the scheduler's step from s_i to s_{i+1}."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = load_base(f"diffusers:{tiny['sd3']}", prompt="a red cat")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny["sd3"], subfolder="scheduler")
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *base.shape), generator=g)
    cond = base.condition(2)
    transformer = base.model.transformer
    for i in (0, 2):  # the first step (from pure noise) and one in the middle
        sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        scheduler._step_index = i
        with torch.no_grad():
            out = transformer(hidden_states=x, timestep=scheduler.timesteps[i].expand(2),
                              encoder_hidden_states=cond["encoder_hidden_states"],
                              pooled_projections=cond["pooled_projections"], return_dict=False)[0]
        expected = scheduler.step(out, scheduler.timesteps[i], x, return_dict=False)[0]
        ours = integrate(base.model, x, solver="euler", steps=1, t0=1 - sigma, t1=1 - sigma_next, cond=cond).x
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(expected, x)  # the step moved the latents


def test_unet2d_time_conventions(tiny):
    spec = diffusers_model_spec(tiny["unet"])
    assert spec["shape"] == [1, 8, 8]
    model = build_model(spec).eval()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        direct = model.unet(x, t * 1000).sample
        torch.testing.assert_close(model(t, x), direct)
        rf = build_model({**spec, "convention": "rectified-flow"}).eval()
        torch.testing.assert_close(rf(t, x), -model.unet(x, (1 - t) * 1000).sample)


def test_module_kind_builds_a_torchcfm_style_net(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, dim=2):\n"
        "        super().__init__(); self.lin = torch.nn.Linear(dim + 1, dim)\n"
        "    def forward(self, t, x, y=None):\n"
        "        return self.lin(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model({"kind": "module", "target": "mynets:Net", "kwargs": {"dim": 2}, "call": "t,x", "shape": [2]})
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(net(t, x), net.lin(torch.cat([x, t[:, None]], 1)))


# --------------------------------------------------------------------------- LoRA


def test_disabled_adapter_is_exactly_the_base_and_policy_swaps_restore(tiny):
    base = load_base(f"diffusers:{tiny['sd3']}", prompt="a cat")
    fresh = load_base(f"diffusers:{tiny['sd3']}", prompt="a cat")
    model = base.model
    spec = lora_spec(model, rank=4)
    add_lora(model, spec)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for k, v in trainable_state_dict(model, keep_vars=True).items():
            if "lora_B" in k:
                v.normal_(0, 0.1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    g = torch.Generator().manual_seed(2)
    x, t, cond = torch.randn(2, *base.shape, generator=g), torch.tensor([0.2, 0.7]), base.condition(2)
    with torch.no_grad():
        expected = fresh.model(t, x, **cond)
        lora_out = model(t, x, **cond)
        assert not torch.allclose(lora_out, expected)
        assert torch.equal(AdapterDisabled(model)(t, x, **cond), expected)
        with adapters_disabled(model):
            assert torch.equal(model(t, x, **cond), expected)
        assert torch.equal(model(t, x, **cond), lora_out)  # re-enabled
    assert list(AdapterDisabled(model).parameters()) == []
    # requires_grad comes back after the reference pass
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    # swapping in other adapter values and back restores the live tensors bitwise
    before = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    zeros = {k: torch.zeros_like(v) for k, v in before.items()}
    with torch.no_grad(), swapped_weights(model, zeros):
        assert torch.equal(model(t, x, **cond), expected)  # B = 0: the base again
    assert all(torch.equal(before[k], v) for k, v in trainable_state_dict(model).items())


def test_lagged_policy_of_a_lora_model_holds_adapter_tensors_only(tiny):
    from flowsteer.methods.policy import LaggedPolicy

    base = load_base(f"diffusers:{tiny['sd3']}", prompt="a cat")
    add_lora(base.model, lora_spec(base.model, rank=2))
    policy = LaggedPolicy(base.model)
    assert policy.net is None
    assert set(policy.weights) == set(trainable_state_dict(base.model))
    n_adapter = sum(v.numel() for v in policy.weights.values())
    n_all = sum(p.numel() for p in base.model.parameters())
    assert n_adapter < 0.2 * n_all


def test_align_sd3_with_lora_and_clip_through_the_cli(tiny, tmp_path):
    out = tmp_path / "aligned"
    reward = f"clip:a red cat;contrast=a photo;model={tiny['clip']}"
    r = cli("align", "--base", f"diffusers:{tiny['sd3']}", "--prompt", "a red cat", "--lora-rank", "4",
            "--reward", reward, "--out", str(out), "--lr", "0.05", "--warmup-steps", "0", *FAST)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["lora"]["r"] == 4 and cfg["condition"]["prompt"] == "a red cat"
    # the run's weights file holds the adapter only; the base weights are untouched
    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(".lora_" in k for k in saved)
    run = load_run(out)
    pretrained = load_file(str(tiny["sd3"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    live = inner_module(run.model).state_dict()
    for key, value in pretrained.items():
        name = key if key in live else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(live[name], value), key
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # the adapter trained
    # the peft-format adapter loads back into a fresh base and gives the run's velocity
    from diffusers import SD3Transformer2DModel

    network = load_adapter(SD3Transformer2DModel.from_pretrained(tiny["sd3"], subfolder="transformer"), out)
    g = torch.Generator().manual_seed(3)
    x, t, cond = torch.randn(2, *run.shape, generator=g), torch.tensor([0.3, 0.6]), run.condition(2)
    with torch.no_grad():
        torch.testing.assert_close(SD3Velocity(network).eval()(t, x, **cond), run.model(t, x, **cond))
    # samples decode through the pipeline's VAE to images in [0, 1]
    r = cli("sample", "--model", str(out), "--n", "3", "--steps", "2", "--out", str(tmp_path / "s.npy"), "--quiet")
    assert r.returncode == 0, r.stderr
    images = np.load(tmp_path / "s.npy")
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    # evaluate conditions on the run's prompt and scores the decoded images
    r = cli("evaluate", "--model", str(out), "--reward", reward, "--n", "4", "--nfe", "1,2", "--json",
            str(tmp_path / "e.json"), "--quiet")
    assert r.returncode == 0, r.stderr
    evaluation = json.loads((tmp_path / "e.json").read_text())
    assert 0 < evaluation["metrics"]["reward_mean"] < 1 and len(evaluation["per_nfe"]) == 2


def test_unet2d_pretrains_and_aligns_through_the_cli(tiny, tmp_path):
    base = tmp_path / "base"
    r = cli("pretrain", "--data", "digits", "--model", f"diffusers:{tiny['unet']}", "--out", str(base), "--steps", "3",
            "--batch-size", "16", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((base / "config.json").read_text())["model"]["kind"] == "diffusers-unet2d"
    for extra in ([], ["--lora-rank", "2"]):
        out = tmp_path / f"aligned{len(extra)}"
        r = cli("align", "--base", str(base), "--reward", "even-digits", "--out", str(out), *extra, *FAST)
        assert r.returncode == 0, r.stderr
        x = load_run(out).sample(4, steps=2).x
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_a_prompt_is_refused_where_it_cannot_apply(tiny, tmp_path):
    r = cli("align", "--base", f"diffusers:{tiny['sd3']}", "--reward", "even-digits", "--out", str(tmp_path / "a"), *FAST)
    assert r.returncode == 2 and "pass --prompt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("align", "--base", f"diffusers:{tiny['unet']}", "--prompt", "x", "--reward", "even-digits",
            "--out", str(tmp_path / "b"), *FAST)
    assert r.returncode == 2 and "drop --prompt" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- CLIP reward


def test_clip_reward_matches_the_processor_and_the_formula(tiny):
    from transformers import CLIPModel, CLIPProcessor

    from flowsteer.rewards import build_reward, score

    g = torch.Generator().manual_seed(4)
    images = torch.rand(5, 3, 16, 16, generator=g)
    cosine = score(build_reward(f"clip:a red cat;model={tiny['clip']}"), images)
    prob = score(build_reward(f"clip:a red cat;contrast=a photo;model={tiny['clip']}"), images)
    assert cosine.shape == prob.shape == (5,) and torch.isfinite(cosine).all() and torch.isfinite(prob).all()
    # a second method: transformers' own processor (PIL path) and CLIPModel's logits
    model, processor = CLIPModel.from_pretrained(tiny["clip"]), CLIPProcessor.from_pretrained(tiny["clip"])
    pil = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in images]
    inputs = processor(text=["a red cat", "a photo"], images=pil, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # scale * cos, [5, 2]
    scale = model.logit_scale.exp()
    torch.testing.assert_close(cosine, logits[:, 0] / scale, atol=2e-2, rtol=0)  # uint8 rounding in the PIL path
    torch.testing.assert_close(prob, torch.softmax(logits, -1)[:, 0], atol=2e-2, rtol=0)
    # grey images in [-1, 1] with range=-1,1 score as the same images in [0, 1]
    grey = images[:, :1]
    a = score(build_reward(f"clip:a red cat;model={tiny['clip']};range=-1,1"), grey * 2 - 1)
    b = score(build_reward(f"clip:a red cat;model={tiny['clip']}"), grey)
    torch.testing.assert_close(a, b)


def test_clip_reward_errors(tmp_path):
    from flowsteer.rewards import RewardError, build_reward

    with pytest.raises(RewardError, match="cannot load the CLIP model"):
        build_reward(f"clip:a cat;model={tmp_path / 'none'}")
    with pytest.raises(RewardError, match="cannot read option"):
        build_reward("clip:a cat;colour=red")


@pytest.mark.parametrize("method, options", [("rwr", ["--rwr-samples", "8", "--refresh-every", "2"]),
                                             ("flow-grpo", ["--group-size", "8"]),
                                             ("nft", ["--group-size", "8", "--refresh-every", "2"])])
def test_every_align_method_runs_on_a_prompt_conditioned_base(method, options, tiny, tmp_path):
    """RWR's fixed sample set and the group methods carry the prompt's states (no class label): RWR used to
    fail building its set (KeyError 'y') and trained without the prompt."""
    out = tmp_path / method
    r = cli("align", "--base", f"diffusers:{tiny['sd3']}", "--prompt", "a red cat", "--lora-rank", "4",
            "--reward", f"clip:a red cat;model={tiny['clip']}", "--method", method, *options, "--out", str(out),
            "--steps", "2", "--batch-size", "8", "--eval-samples", "8", "--eval-every", "0", "--rollout-steps", "2",
            "--quiet")
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["reward_calls"] == (8 if method == "rwr" else 8 * (1 if method == "flow-grpo" else 2))
