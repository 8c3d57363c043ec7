"""Exports that diffusers and peft load as they are (issue 19), and LoRA files read back into flowsteer.

Offline: a tiny random SD3 pipeline and UNet2DModel built from configs.  The LoRA run has rank 4 and
lora_alpha 8, so an export that drops the scale alpha / r = 2 gives a different network.

Tolerances: one network evaluation of the exported model against the run's network: atol = rtol = 1e-5
(``MAX_ABS`` = 2e-5 where a maximum absolute difference is checked; outputs are of order 1; float32,
the folded scale 2 is exact, the merge rounds W + 2 B A once; measured: about 1e-6).  Whole samplers
(4 or 25 steps): atol = rtol = 1e-4 (the 4-step SD3 one measured 6e-8).  A control counts as "different"
when it is off by more than 1e-3, 50 times MAX_ABS, and the LoRA itself moves the transformer's output by
more than 1e-2 (checked), so the positive checks could fail.

The run folder itself loads both ways (``pipe.load_lora_weights(RUN)``, ``PeftModel.from_pretrained(net,
RUN)``): each check fails if nothing is applied (an empty adapter list, or an output equal to the base's),
since both libraries only warn when they cannot place a key.  ``--init-lora`` is checked end to end
through ``align()``: its step-0 network equals the pipeline with that LoRA loaded by diffusers or peft.
The bad inputs of ``flowsteer export`` and ``--init-lora`` through the command line are cases of
``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from flowsteer import runs  # noqa: E402
from flowsteer.bases import diffusers_run_config  # noqa: E402
from flowsteer.cli import main  # noqa: E402
from flowsteer.config import ExportConfig, align_train_defaults  # noqa: E402
from flowsteer.errors import ConfigError, RunFolderError  # noqa: E402
from flowsteer.export import export_finished_run, export_run  # noqa: E402
from flowsteer.methods.configs import AlignConfig  # noqa: E402
from flowsteer.methods.orw import align  # noqa: E402
from flowsteer.model_card import usage_snippet  # noqa: E402
from flowsteer.models import build_model, lora_files  # noqa: E402
from flowsteer.models.lora import add_lora, lora_spec  # noqa: E402
from flowsteer.models.lora_files import DIFFUSERS_LORA_WEIGHTS, from_peft_state, init_lora, read_lora  # noqa: E402
from flowsteer.models.tiny import save_tiny_sd3_pipeline, save_tiny_unet2d  # noqa: E402
from flowsteer.models.weights import has_lora, trainable_state_dict  # noqa: E402
from flowsteer.runs import load_run, save_weights, write_config  # noqa: E402
from flowsteer.solvers import integrate  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}      # one network evaluation
SAMPLER_TOL = {"atol": 1e-4, "rtol": 1e-4}  # a 4-step sampler
MAX_ABS = TOL["atol"] + TOL["rtol"]
DIFFERENT = 1e-3                        # a control must be off by more than this
RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"sd3": save_tiny_sd3_pipeline(root / "sd3"), "unet": save_tiny_unet2d(root / "unet")}


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    """A real (short) ORW align run of the tiny SD3 pipeline with LoRA r = 4, lora_alpha = 8."""
    out = tmp_path_factory.mktemp("runs") / "aligned"
    train = dataclasses.replace(align_train_defaults(), steps=3, batch_size=4, lr=0.05, warmup_steps=0,
                                ema_decay=0.0, log_every=1)
    config = AlignConfig(base=f"diffusers:{tiny['sd3']}", reward="jpeg-compressibility", prompt="a red cat",
                         lora_rank=RANK, lora_alpha=ALPHA, eval_every=0, eval_samples=4, eval_steps=2,
                         rollout_steps=2, refresh_every=2, train=train)
    align(config, out, progress="quiet")
    trained = load_file(str(out / "model.safetensors"))
    assert all(".lora_" in k for k in trained)
    trained_b = [float(v.abs().max()) for k, v in trained.items() if "lora_B" in k]
    assert sum(b > 1e-3 for b in trained_b) > len(trained_b) / 2  # lora_B moved off zero (the last block's
    # context projections feed nothing, so their lora_B get no gradient)
    return out


def export(run: Path, out: Path, **kw) -> Path:
    return export_run(ExportConfig(run=str(run), out=str(out), **kw)).path


def run_adapter(run: Path) -> dict[str, torch.Tensor]:
    """The run's own adapter tensors, keyed relative to the network, lora_alpha / r not applied."""
    return from_peft_state(load_file(str(run / runs.ADAPTER_WEIGHTS_FILE)))


def pipeline(tiny):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny["sd3"], text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probes(run, n: int = 2):
    """Latents and SD3 sigmas at which the networks are compared, and the run's prompt states."""
    g = torch.Generator().manual_seed(7)
    return torch.randn((n, *run.shape), generator=g), torch.tensor([0.9, 0.35][:n]), run.condition(n)


def transformer_output(transformer, x, sigma, cond, **kw):
    """What the SD3 pipeline asks its transformer: timestep = 1000 sigma, output = noise - data."""
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=1000 * sigma, encoder_hidden_states=cond["encoder_hidden_states"],
                           pooled_projections=cond["pooled_projections"], return_dict=False, **kw)[0]


def run_output(run, x, sigma, cond):
    """The run's flowsteer network at the same point, in the pipeline's convention (t = 1 - sigma, sign flipped)."""
    with torch.no_grad():
        return -run.model(1 - sigma, x, **cond)


def loaded_into_pipeline(tiny, run, lora_dir):
    """``(adapters, max |pipeline transformer - run network|)`` after ``pipe.load_lora_weights(lora_dir)``."""
    pipe = pipeline(tiny)
    pipe.load_lora_weights(str(lora_dir))
    x, sigma, cond = probes(run)
    diff = (transformer_output(pipe.transformer, x, sigma, cond) - run_output(run, x, sigma, cond)).abs().max()
    return pipe.get_list_adapters().get("transformer", []), float(diff)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- diffusers LoRA file


def test_diffusers_export_loads_into_the_pipeline_and_equals_the_run(tiny, lora_run, tmp_path):
    out = export(lora_run, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", DIFFUSERS_LORA_WEIGHTS]
    with safe_open(str(out / DIFFUSERS_LORA_WEIGHTS), framework="pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any(".default." in k or "base_model.model." in k for k in keys)
    assert "lora_adapter_metadata" not in header  # the scale is folded instead
    run = load_run(lora_run)
    adapters, diff = loaded_into_pipeline(tiny, run, out)
    assert adapters, "diffusers applied no LoRA"
    assert diff <= MAX_ABS, diff
    x, sigma, cond = probes(run)
    lora_effect = (transformer_output(pipeline(tiny).transformer, x, sigma, cond) - run_output(run, x, sigma, cond))
    assert lora_effect.abs().max() > 10 * DIFFERENT  # the LoRA matters, so the controls below can fail


def test_file_names_are_the_libraries_own():
    """A run folder loads the diffusers and peft way because its file names are theirs."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    assert runs.DIFFUSERS_LORA_FILE == lora_files.DIFFUSERS_LORA_WEIGHTS == LORA_WEIGHT_NAME_SAFE
    assert runs.ADAPTER_WEIGHTS_FILE == lora_files.PEFT_WEIGHTS == SAFETENSORS_WEIGHTS_NAME
    assert runs.ADAPTER_CONFIG_FILE == lora_files.PEFT_CONFIG == CONFIG_NAME
    assert lora_files.METADATA_KEY == LORA_ADAPTER_METADATA_KEY


def test_the_run_folder_itself_loads_with_load_lora_weights(tiny, lora_run):
    """``pipe.load_lora_weights(RUN)`` must pick the diffusers file among the run's .safetensors and apply it."""
    names = sorted(p.name for p in lora_run.glob("*.safetensors"))
    assert len(names) > 1 and runs.DIFFUSERS_LORA_FILE in names  # diffusers has to choose, and chooses ours
    run = load_run(lora_run)
    adapters, diff = loaded_into_pipeline(tiny, run, lora_run)
    assert adapters, "diffusers applied no LoRA from the run folder"
    assert diff <= MAX_ABS, diff
    # the end of the run also wrote the export into RUN/diffusers/, with its model card
    folder = lora_run / runs.EXPORT_DIR
    assert sorted(p.name for p in folder.iterdir()) == [runs.MODEL_CARD_FILE, DIFFUSERS_LORA_WEIGHTS]
    assert run.config["diffusers_export"] == {"folder": runs.EXPORT_DIR, "layout": "lora-file",
                                              "load": run.config["diffusers_export"]["load"]}
    assert str(folder) in run.config["diffusers_export"]["load"]
    adapters, diff = loaded_into_pipeline(tiny, run, folder)
    assert adapters and diff <= MAX_ABS, diff


def test_negative_controls_fail_the_same_assertions(tiny, lora_run, tmp_path):
    """Two wrong exports built by hand from the run's raw adapter: they must not pass the check above."""
    run = load_run(lora_run)
    raw = run_adapter(lora_run)
    folded = {k: v * (ALPHA / RANK) if "lora_B" in k else v for k, v in raw.items()}
    controls = {"no transformer. prefix": folded,
                "unfolded, no metadata": {f"transformer.{k}": v for k, v in raw.items()}}
    for name, state in controls.items():
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        folder.mkdir()
        save_file(state, str(folder / DIFFUSERS_LORA_WEIGHTS), metadata={"format": "pt"})
        adapters, diff = loaded_into_pipeline(tiny, run, folder)
        assert not (adapters and diff <= MAX_ABS), name
        assert diff > DIFFERENT, (name, diff)
        if name.startswith("no transformer"):
            assert not adapters  # issue 19: diffusers found no key and applied nothing


def test_lora_metadata_export_keeps_lora_b_and_records_alpha(tiny, lora_run, tmp_path):
    out = export(lora_run, tmp_path / "export", lora_metadata=True)
    with safe_open(str(out / DIFFUSERS_LORA_WEIGHTS), framework="pt") as f:
        header = json.loads(f.metadata()["lora_adapter_metadata"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert header["transformer.r"] == RANK and header["transformer.lora_alpha"] == ALPHA
    raw = run_adapter(lora_run)
    assert all(torch.equal(state[f"transformer.{k}"], v) for k, v in raw.items())  # not folded as well
    adapters, diff = loaded_into_pipeline(tiny, load_run(lora_run), out)
    assert adapters and diff <= MAX_ABS, diff


def test_pipeline_samples_as_flowsteer_does(tiny, lora_run, tmp_path):
    """Prompt (tiny tokenizers) or prompt states -> latents; flowsteer's Euler on the scheduler's sigmas agrees."""
    out = export(lora_run, tmp_path / "export")
    run = load_run(lora_run)
    pipe, base = pipeline(tiny), pipeline(tiny)
    pipe.load_lora_weights(str(out))
    cond = run.condition(1)
    x0 = torch.randn((1, *run.shape), generator=torch.Generator().manual_seed(11))
    steps = 4
    common = {"latents": x0.clone(), "num_inference_steps": steps, "guidance_scale": 1.0, "output_type": "latent"}
    embeds = {"prompt_embeds": cond["encoder_hidden_states"], "pooled_prompt_embeds": cond["pooled_projections"]}
    with torch.no_grad():
        by_embeds = pipe(**embeds, **common).images
        sigmas = [float(s) for s in pipe.scheduler.sigmas]
        by_prompt = pipe(prompt="a red cat", **common).images
        unscaled = pipe(**embeds, **common, joint_attention_kwargs={"scale": 0.0}).images
        base_latents = base(**embeds, **common).images
    assert by_embeds.shape == x0.shape and len(sigmas) == steps + 1 and sigmas[-1] == 0.0
    torch.testing.assert_close(by_prompt, by_embeds, **SAMPLER_TOL)
    x = x0.clone()
    for s, s_next in itertools.pairwise(sigmas):  # flowsteer's time t = 1 - sigma
        x = integrate(run.model, x, solver="euler", steps=1, t0=1 - s, t1=1 - s_next, cond=cond).x
    torch.testing.assert_close(x, by_embeds, **SAMPLER_TOL)
    torch.testing.assert_close(unscaled, base_latents, **SAMPLER_TOL)  # scale 0: the base model
    assert (by_embeds - base_latents).abs().max() > DIFFERENT


# --------------------------------------------------------------------------- merged and peft exports


def test_merged_export_loads_with_from_pretrained_and_equals_the_run(lora_run, tmp_path):
    from diffusers import SD3Transformer2DModel

    out = export(lora_run, tmp_path / "merged", merge=True)
    weights = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in weights)
    net = SD3Transformer2DModel.from_pretrained(str(out)).eval()
    run = load_run(lora_run)
    x, sigma, cond = probes(run)
    torch.testing.assert_close(transformer_output(net, x, sigma, cond), run_output(run, x, sigma, cond), **TOL)


def test_peft_export_and_the_run_folder_load_with_peft_model(tiny, lora_run, tmp_path):
    """``PeftModel.from_pretrained(network, DIR)`` loads the peft export and the run folder itself (peft only warns
    about keys it cannot place, so the output is compared, and the base's output must differ)."""
    from diffusers import SD3Transformer2DModel
    from peft import PeftModel

    out = export(lora_run, tmp_path / "peft", format="peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    run = load_run(lora_run)
    x, sigma, cond = probes(run)
    for folder in (out, lora_run):
        assert all(k.startswith("base_model.model.") for k in load_file(str(folder / runs.ADAPTER_WEIGHTS_FILE)))
        transformer = SD3Transformer2DModel.from_pretrained(tiny["sd3"], subfolder="transformer").eval()
        base = transformer_output(transformer, x, sigma, cond)
        PeftModel.from_pretrained(transformer, str(folder))  # injects into transformer in place
        loaded = transformer_output(transformer.eval(), x, sigma, cond)
        assert (loaded - base).abs().max() > 10 * DIFFERENT, f"{folder}: nothing loaded"
        torch.testing.assert_close(loaded, run_output(run, x, sigma, cond), **TOL)
    # a run folder written before the keys carried peft's prefix still loads through flowsteer.runs.load_adapter
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(lora_run / runs.ADAPTER_CONFIG_FILE, old)
    save_file(run_adapter(lora_run), str(old / runs.ADAPTER_WEIGHTS_FILE))
    network = runs.load_adapter(SD3Transformer2DModel.from_pretrained(tiny["sd3"], subfolder="transformer"), old)
    torch.testing.assert_close(transformer_output(network.eval(), x, sigma, cond), run_output(run, x, sigma, cond),
                               **TOL)


# --------------------------------------------------------------------------- read_lora / init_lora


def test_init_lora_continues_from_exactly_the_files_weights(tiny, lora_run, tmp_path):
    run = load_run(lora_run)
    base_spec = {k: v for k, v in run.config["model"].items() if k != "lora"}
    sources = {"diffusers file": (export(lora_run, tmp_path / "d") / DIFFUSERS_LORA_WEIGHTS, RANK, float(RANK)),
               "diffusers folder + metadata": (export(lora_run, tmp_path / "m", lora_metadata=True), RANK, ALPHA),
               "peft export": (export(lora_run, tmp_path / "p", format="peft"), RANK, ALPHA),
               "run folder": (lora_run, RANK, ALPHA)}
    x, sigma, cond = probes(run)
    t = 1 - sigma
    with torch.no_grad():
        expected = run.model(t, x, **cond)
    for name, (source, r, alpha) in sources.items():
        model = build_model(base_spec).eval()
        spec = init_lora(model, source)
        assert (spec["r"], spec["lora_alpha"]) == (r, alpha), name
        assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
        with torch.no_grad():
            torch.testing.assert_close(model(t, x, **cond), expected, **TOL, msg=name)
        # the returned spec is the run's model spec entry: the same model is rebuilt from it
        rebuilt = build_model({**base_spec, "lora": spec}).eval()
        rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ConfigError, match="already has LoRA"):
        init_lora(model, sources["peft export"][0])


def test_align_with_init_lora_starts_from_exactly_those_weights(tiny, lora_run, tmp_path):
    """End to end through align(): at step 0 the trained network is the pipeline with the LoRA loaded
    (``load_lora_weights`` for the diffusers file, ``PeftModel.from_pretrained`` for the peft folder)."""
    from diffusers import SD3Transformer2DModel
    from peft import PeftModel

    run = load_run(lora_run)
    x, sigma, cond = probes(run)
    diffusers_dir = export(lora_run, tmp_path / "d")
    peft_dir = export(lora_run, tmp_path / "p", format="peft")
    pipe = pipeline(tiny)
    pipe.load_lora_weights(str(diffusers_dir))
    transformer = SD3Transformer2DModel.from_pretrained(tiny["sd3"], subfolder="transformer")
    PeftModel.from_pretrained(transformer, str(peft_dir))
    sources = {"diffusers file": (diffusers_dir / DIFFUSERS_LORA_WEIGHTS, pipe.transformer, float(RANK)),
               "peft folder": (peft_dir, transformer.eval(), ALPHA)}
    train = dataclasses.replace(align_train_defaults(), steps=1, batch_size=2, warmup_steps=0, log_every=1)
    config = AlignConfig(base=f"diffusers:{tiny['sd3']}", reward="jpeg-compressibility", prompt="a red cat",
                         eval_every=0, eval_samples=2, eval_steps=1, rollout_steps=1, refresh_every=1, train=train)
    for name, (source, loaded, alpha) in sources.items():
        seen: dict[str, torch.Tensor] = {}

        def evaluate(trainer, seen=seen):
            if trainer.step == 0:
                with torch.no_grad():
                    seen["step 0"] = -trainer.model(1 - sigma, x, **cond)
            return {}

        done = align(dataclasses.replace(config, init_lora=str(source)), None, progress="quiet", evaluate=evaluate)
        torch.testing.assert_close(seen["step 0"], transformer_output(loaded, x, sigma, cond), **TOL, msg=name)
        assert done.config["settings"]["init_lora"] == str(source)
        assert (done.config["model"]["lora"]["r"], done.config["model"]["lora"]["lora_alpha"]) == (RANK, alpha)
    with pytest.raises(ConfigError, match="--lora-rank says 2"):
        align(dataclasses.replace(config, init_lora=str(peft_dir), lora_rank=2), tmp_path / "bad", progress="quiet")
    assert not (tmp_path / "bad").exists()


def test_a_failed_export_does_not_lose_the_run(tiny, tmp_path, monkeypatch):
    """The run's own files come first; an export that raises is recorded in config.json, not raised."""
    def broken(run_dir, run):
        raise OSError("disk full")

    monkeypatch.setattr("flowsteer.methods.common.export_finished_run", broken)
    train = dataclasses.replace(align_train_defaults(), steps=1, batch_size=2, warmup_steps=0, log_every=1)
    out = tmp_path / "run"
    align(AlignConfig(base=f"diffusers:{tiny['sd3']}", reward="jpeg-compressibility", prompt="a red cat", lora_rank=2,
                      eval_every=0, eval_samples=2, eval_steps=1, rollout_steps=1, refresh_every=1, train=train),
          out, progress="quiet")
    cfg = json.loads((out / runs.CONFIG_FILE).read_text())
    assert cfg["diffusers_export"]["failed"].startswith("OSError: disk full; write it with flowsteer export")
    assert not (out / runs.EXPORT_DIR).exists()
    for name in (runs.WEIGHTS_FILE, runs.ADAPTER_WEIGHTS_FILE, runs.DIFFUSERS_LORA_FILE, runs.FINAL_METRICS_FILE):
        assert (out / name).is_file(), name
    load_run(out)


def test_init_lora_reads_another_tools_peft_folder(tiny, tmp_path):
    """A folder written by PeftModel.save_pretrained (keys base_model.model.*, r = 2, lora_alpha = 6)."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    other = get_peft_model(SD3Transformer2DModel.from_pretrained(tiny["sd3"], subfolder="transformer"),
                           LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, p in other.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    other.save_pretrained(str(tmp_path / "other"))
    state, spec = read_lora(tmp_path / "other")
    assert spec == {"r": 2, "lora_alpha": 6.0, "target_modules": ["to_q", "to_v"]}
    assert all(not k.startswith("base_model") and ".default." not in k for k in state)
    base = diffusers_run_config(tiny["sd3"], prompt="x")["model"]
    model = build_model(base).eval()
    init_lora(model, tmp_path / "other")
    g = torch.Generator().manual_seed(8)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), {"encoder_hidden_states": torch.randn(2, 5, 32, generator=g),
                                                      "pooled_projections": torch.randn(2, 32, generator=g)}
    sigma = torch.tensor([0.8, 0.2])
    torch.testing.assert_close(-model(1 - sigma, x, **cond).detach(),
                               transformer_output(other.base_model.model.eval(), x, sigma, cond), **TOL)


def test_read_lora_refuses_what_it_cannot_apply_exactly(lora_run, tmp_path):
    good = load_file(str(export(lora_run, tmp_path / "d") / DIFFUSERS_LORA_WEIGHTS))

    def write(name, state, metadata=None):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata=metadata or {"format": "pt"})
        return path

    a = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    b = a.replace("lora_A", "lora_B")
    mixed = {**good, a: good[a][:2], b: good[b][:, :2].contiguous()}
    cases = {
        "different ranks": write("mixed", mixed),
        "unknown key 'transformer.transformer_blocks.0.attn.to_q.alpha'":
            write("alpha", {**good, "transformer.transformer_blocks.0.attn.to_q.alpha": torch.tensor(8.0)}),
        "unknown key 'transformer_blocks": write("noprefix", {k[len("transformer."):]: v for k, v in good.items()}),
        "text_encoder": write("te", {**good, "text_encoder.text_model.q_proj.lora_A.weight": torch.zeros(4, 16)}),
        "no lora_B": write("half", {k: v for k, v in good.items() if k != a.replace("lora_A", "lora_B")}),
        "per-module ranks": write("pattern", good, {"format": "pt", "lora_adapter_metadata": json.dumps(
            {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.rank_pattern": {"to_q": 2}})}),
        "no such file": tmp_path / "absent.safetensors",
        "cannot read it as safetensors": tmp_path / "damaged.safetensors",
    }
    (tmp_path / "damaged.safetensors").write_bytes(b"not a safetensors file" * 4)
    for message, path in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
            read_lora(path)
        assert "\n" not in str(err.value)


def test_init_lora_refuses_a_lora_for_another_network(tiny, lora_run, tmp_path):
    unet = build_model(diffusers_run_config(tiny["unet"])["model"])
    with pytest.raises(ConfigError, match="no layer"):
        init_lora(unet, export(lora_run, tmp_path / "d"))
    assert not has_lora(unet)  # checked before anything was injected


# --------------------------------------------------------------------------- model card


def test_model_card_snippets_run(tiny, lora_run, tmp_path):
    from PIL import Image

    cfg = json.loads((lora_run / "config.json").read_text())
    for layout, kw in (("lora-file", {}), ("peft", {"format": "peft"}), ("model-folder", {"merge": True})):
        out = export(lora_run, tmp_path / layout, **kw)
        card = (out / "README.md").read_text()
        snippet = usage_snippet(cfg, out, layout)
        assert f"```python\n{snippet}```" in card
        for fact in (str(tiny["sd3"].resolve()), "orw-w2", "jpeg-compressibility", "| steps | 3 |", "reward_mean",
                     "rectified-flow", "a red cat"):
            assert fact in card, (layout, fact)
        namespace: dict = {}
        exec(compile(snippet, f"<{layout} snippet>", "exec"), namespace)  # noqa: S102 - the card's own code
        assert isinstance(namespace["image"], Image.Image) and namespace["image"].size == (16, 16)
    assert "lora_alpha / r = 2 folded into lora_B" in (tmp_path / "lora-file" / "README.md").read_text()


# --------------------------------------------------------------------------- UNet2DModel runs


def fake_run(folder: Path, tiny, *, convention="flowsteer", lora=False, base=None) -> tuple[Path, torch.nn.Module]:
    """A run folder of the tiny UNet2DModel (weights perturbed, or a random non-zero LoRA) written by the library."""
    cfg = diffusers_run_config(tiny["unet"])
    spec = {**cfg["model"], "convention": convention}
    model = build_model(spec)
    torch.manual_seed(3)
    with torch.no_grad():
        if lora:
            spec["lora"] = lora_spec(model, rank=2, alpha=6.0)
            add_lora(model, spec["lora"])
            for k, v in trainable_state_dict(model, keep_vars=True).items():
                if "lora_B" in k:
                    v.normal_(0, 0.3)
        else:
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    folder.mkdir(parents=True)
    write_config(folder, {**{k: v for k, v in cfg.items() if not k.startswith("format")}, "model": spec,
                          "method": "align", "align_method": "orw-w2", "base": base or f"diffusers:{tiny['unet']}",
                          "settings": {"reward": "even-digits"}, "final": {"reward_mean": 0.5}, "steps_done": 4})
    save_weights(folder / "model.safetensors", trainable_state_dict(model))
    return folder, model.eval()


def test_unet2d_exports_and_refusals(tiny, tmp_path):
    from diffusers import UNet2DModel

    g = torch.Generator().manual_seed(9)
    x, t = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([0.2, 0.5, 0.9])
    full, _ = fake_run(tmp_path / "full", tiny)
    with pytest.raises(ConfigError, match="flowsteer's time convention.*rectified-flow"):
        export(full, tmp_path / "o1")
    with pytest.raises(ConfigError, match="fine-tuned every weight"):
        export(full, tmp_path / "o2", format="peft")
    rf_lora, model = fake_run(tmp_path / "rf_lora", tiny, convention="rectified-flow", lora=True)
    with pytest.raises(ConfigError, match="no load_lora_weights.*--merge.*--format peft"):
        export(rf_lora, tmp_path / "o3")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    merged = UNet2DModel.from_pretrained(str(export(rf_lora, tmp_path / "merged", merge=True))).eval()
    with torch.no_grad():  # rectified flow: timestep 1000 (1 - t), output = -(velocity)
        torch.testing.assert_close(-merged(x, 1000 * (1 - t)).sample, model(t, x), **TOL)
    # what the end of such a run writes into RUN/diffusers/: the merged folder (the run's network keeps its LoRA)
    finished = load_run(rf_lora)
    note = export_finished_run(rf_lora, finished)
    assert note["layout"] == "model-folder" and has_lora(finished.model)
    merged = UNet2DModel.from_pretrained(str(rf_lora / runs.EXPORT_DIR)).eval()
    with torch.no_grad():
        torch.testing.assert_close(-merged(x, 1000 * (1 - t)).sample, model(t, x), **TOL)
    rf_full, rf_model = fake_run(tmp_path / "rf_full", tiny, convention="rectified-flow")
    folder = UNet2DModel.from_pretrained(str(export(rf_full, tmp_path / "rf_folder"))).eval()
    with torch.no_grad():
        torch.testing.assert_close(-folder(x, 1000 * (1 - t)).sample, rf_model(t, x), **TOL)
    # a flowsteer-convention LoRA goes out in peft's format; its card's sampling loop is flowsteer's Euler sampler
    fs_lora, fs_model = fake_run(tmp_path / "fs_lora", tiny, lora=True)
    note = export_finished_run(fs_lora, load_run(fs_lora))  # the end of such a run skips, saying why
    assert "flowsteer's time convention" in note["skipped"] and not (fs_lora / runs.EXPORT_DIR).exists()
    out = export(fs_lora, tmp_path / "fs_peft", format="peft")
    snippet = usage_snippet(json.loads((fs_lora / "config.json").read_text()), out, "peft")
    assert snippet in (out / "README.md").read_text()
    namespace: dict = {}
    exec(compile(snippet, "<unet peft snippet>", "exec"), namespace)  # noqa: S102
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(namespace["x"], integrate(fs_model, x0, solver="euler", steps=25).x, **SAMPLER_TOL)
    for path, folder in ((rf_full, tmp_path / "rf_folder"), (rf_lora, tmp_path / "merged")):
        snippet = usage_snippet(json.loads((path / "config.json").read_text()), folder, "model-folder")
        assert snippet in (folder / "README.md").read_text()
        exec(compile(snippet, "<rectified-flow snippet>", "exec"), namespace)  # noqa: S102 - a scheduler loop
        assert namespace["x"].shape == (4, 1, 8, 8) and torch.isfinite(namespace["x"]).all()


def test_lora_on_a_fully_fine_tuned_base_run_is_refused(tiny, tmp_path):
    """Such a run's adapter was trained on weights the run does not keep; no export can reproduce it."""
    base, _ = fake_run(tmp_path / "base", tiny, convention="rectified-flow")
    lora, _ = fake_run(tmp_path / "lora", tiny, convention="rectified-flow", lora=True, base=str(base))
    with pytest.raises(ConfigError, match="fine-tuned weights of the run"):
        export(lora, tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad input


def test_bad_input_writes_nothing(lora_run, tmp_path, monkeypatch):
    from flowsteer.config import TrainConfig
    from flowsteer.methods.configs import PretrainConfig
    from flowsteer.methods.pretrain import pretrain

    moons = tmp_path / "moons"
    pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=20, batch_size=64, warmup_steps=0, log_every=10)),
             moons, progress="quiet")
    with pytest.raises(ConfigError, match="flowsteer's own 'mlp' network") as err:
        export(moons, tmp_path / "o")
    assert "\n" not in str(err.value)
    with pytest.raises(RunFolderError, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "o")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_bytes(b"mine\n")
    (busy / DIFFUSERS_LORA_WEIGHTS).write_bytes(b"an older export")
    before = snapshot(busy)
    with pytest.raises(ConfigError, match="already holds files"):
        export(lora_run, busy)
    assert snapshot(busy) == before
    (tmp_path / "a_file").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        export(lora_run, tmp_path / "a_file")
    assert (tmp_path / "a_file").read_bytes() == b"x"
    with pytest.raises(ConfigError, match="3 problems"):
        export_run(ExportConfig(run="", out=str(tmp_path / "o"), format="onnx", merge=True,
                                lora_metadata=True))
    with pytest.raises(ConfigError, match="--lora-metadata"):
        export(lora_run, tmp_path / "o", merge=True, lora_metadata=True)
    assert len(ExportConfig().validate()) == 2
    assert all(f.metadata.get("help") for f in dataclasses.fields(ExportConfig))
    # a failure while writing leaves neither the out folder nor a temporary one behind
    run_before = snapshot(lora_run)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("flowsteer.export.model_card", broken)
    with pytest.raises(RuntimeError):
        export(lora_run, tmp_path / "o")
    assert snapshot(lora_run) == run_before
    assert not (tmp_path / "o").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    # an empty out folder is fine
    (tmp_path / "empty").mkdir()
    monkeypatch.undo()
    assert (export(lora_run, tmp_path / "empty") / DIFFUSERS_LORA_WEIGHTS).is_file()


def test_export_through_the_command_line(lora_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(lora_run), "--out", str(out), "--lora-metadata"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "load_lora_weights" in lines[0] and str(out) in lines[0], lines
    assert "lora_adapter_metadata" in safe_open(str(out / DIFFUSERS_LORA_WEIGHTS), framework="pt").metadata()
    before = snapshot(out)
    assert main(["export", str(lora_run), "--out", str(out), "--merge"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "already holds files" in errors[0], errors
    assert snapshot(out) == before
