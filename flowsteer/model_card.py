"""The model card of an export (``README.md``) and the code that loads an export, as the card shows it.

:func:`usage_snippet` is Python that loads the export with diffusers (and peft) alone and samples once;
``tests/test_export.py`` runs it for every layout.  :func:`load_line` is the one-line version the
command line prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import __version__
from .io import json_text
from .models.adapters import absent_components
from .models.lora_files import DIFFUSERS_LORA_WEIGHTS, NETWORK_PREFIX, PEFT_CONFIG, PEFT_WEIGHTS

_RECTIFIED_FLOW = ("the rectified-flow convention: x_s = (1 - s) data + s noise, timestep = 1000 s, the network "
                   "predicts noise - data (diffusers' FlowMatchEulerDiscreteScheduler); flowsteer's t is 1 - s")
_FLOWSTEER_TIME = ("flowsteer's convention: x_t = t data + (1 - t) noise, timestep = 1000 t (t = 0 is noise), the "
                   "network predicts data - noise; integrate dx/dt = output from t = 0 to 1")


def load_line(cfg: dict[str, Any], out: str | Path, layout: str) -> str:
    """How to load the export at ``out`` in one line (the command line prints it)."""
    spec = cfg["model"]
    out = str(out)
    if layout == "lora-file":
        return f"StableDiffusion3Pipeline.from_pretrained({spec.get('pretrained')!r}).load_lora_weights({out!r})"
    if layout == "peft":
        return f"PeftModel.from_pretrained(network, {out!r}) on the base network from {spec.get('pretrained')!r}"
    network = "SD3Transformer2DModel" if spec["kind"] == "diffusers-sd3" else "UNet2DModel"
    return f"{network}.from_pretrained({out!r})"


def usage_snippet(cfg: dict[str, Any], out: str | Path, layout: str) -> str:
    """Python code that loads the export at ``out`` (layout of :func:`export_layout`) and samples once.

    SD3: a ``StableDiffusion3Pipeline`` on the run's base with the export loaded, called on the run's
    prompt; UNet2DModel: the network and the sampling loop of its time convention.
    """
    spec = cfg["model"]
    out = str(Path(out).resolve())
    base, sub = spec.get("pretrained", ""), spec.get("subfolder")
    if spec["kind"] == "diffusers-sd3":
        prompt = (cfg.get("condition") or {}).get("prompt", "")
        extra = "".join(f", {k}=None" for k in absent_components(base))
        classes = "StableDiffusion3Pipeline"
        if layout != "lora-file":
            classes = "SD3Transformer2DModel, " + classes
        lines = ["import torch", f"from diffusers import {classes}"]
        if layout == "lora-file":
            lines += ["", f"pipe = StableDiffusion3Pipeline.from_pretrained({base!r}{extra})",
                      f"pipe.load_lora_weights({out!r})",
                      'assert pipe.get_list_adapters().get("transformer"), "the LoRA did not load"']
        else:
            if layout == "peft":
                lines += ["from peft import PeftModel", "",
                          f"transformer = SD3Transformer2DModel.from_pretrained({base!r}, subfolder={sub!r})",
                          f"transformer = PeftModel.from_pretrained(transformer, {out!r}).merge_and_unload()"]
            else:
                lines += ["", f"transformer = SD3Transformer2DModel.from_pretrained({out!r})"]
            lines += [f"pipe = StableDiffusion3Pipeline.from_pretrained({base!r}, transformer=transformer{extra})"]
        lines += ["# flowsteer sampled without classifier-free guidance; guidance_scale=1.0 does the same",
                  f"image = pipe({prompt!r}, num_inference_steps=28, guidance_scale=1.0,",
                  "             generator=torch.Generator().manual_seed(0)).images[0]"]
        return "\n".join(lines) + "\n"
    shape = list(spec.get("shape") or [3, 32, 32])
    lines = ["import torch", "from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel"]
    if layout == "peft":
        lines += ["from peft import PeftModel", "",
                  f"unet = UNet2DModel.from_pretrained({base!r}" + (f", subfolder={sub!r})" if sub else ")"),
                  f"unet = PeftModel.from_pretrained(unet, {out!r}).merge_and_unload().eval()"]
    else:
        lines += ["", f"unet = UNet2DModel.from_pretrained({out!r}).eval()"]
    labels = ", class_labels=torch.zeros(4, dtype=torch.long)" if spec.get("num_classes") else ""
    lines += [f"x = torch.randn(4, {', '.join(str(s) for s in shape)}, generator=torch.Generator().manual_seed(0))"]
    if spec.get("convention", "flowsteer") == "rectified-flow":
        lines += ["scheduler = FlowMatchEulerDiscreteScheduler()", "scheduler.set_timesteps(25)",
                  "with torch.no_grad():", "    for t in scheduler.timesteps:",
                  f"        x = scheduler.step(unet(x, t{labels}).sample, t, x).prev_sample"]
    else:
        lines += ["steps = 25  # flowsteer's time convention: Euler from t = 0 (noise) to t = 1, timestep = 1000 t",
                  "with torch.no_grad():", "    for i in range(steps):",
                  f"        x = x + unet(x, 1000.0 * i / steps{labels}).sample / steps"]
    norm = (cfg.get("data") or {}).get("normalizer") or {}
    if norm and (norm.get("mean") not in ([0.0], [0], None) or norm.get("std") not in ([1.0], [1], None)):
        lines += ["# x is in the model's units; data = x * std + mean with the run's normaliser (see the card)"]
    return "\n".join(lines) + "\n"


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json_text(v, indent=None).strip()  # NaN and infinity as null, like every JSON flowsteer writes
    return str(v)


def model_card(cfg: dict[str, Any], out: str | Path, layout: str, *, run: str | Path = "",
               lora_metadata: bool = False) -> str:
    """The ``README.md`` of an export: what the run was, how it was trained and how to load it."""
    spec = cfg["model"]
    settings = cfg.get("settings") or {}
    lora = spec.get("lora")
    method = cfg.get("method", "?")
    if cfg.get("align_method"):
        method = f"{method} ({cfg['align_method']})"
    steps = cfg.get("steps_done", (settings.get("train") or {}).get("steps", "?"))
    files = {"lora-file": f"`{DIFFUSERS_LORA_WEIGHTS}` (diffusers LoRA, keys `{NETWORK_PREFIX[spec['kind']]}.*`)",
             "peft": f"`{PEFT_WEIGHTS}` + `{PEFT_CONFIG}` (peft, as PeftModel.save_pretrained writes them)",
             "model-folder": "a diffusers model folder (`config.json` + `diffusion_pytorch_model.safetensors`)"}[layout]
    rows = [("base", cfg.get("base") or spec.get("pretrained", "?")), ("base weights", spec.get("pretrained", "?")),
            ("method", method), ("reward", settings.get("reward", "-")), ("steps", steps)]
    if (cfg.get("condition") or {}).get("prompt") is not None:
        rows.append(("prompt", cfg["condition"]["prompt"]))
    if lora:
        scale = float(lora["lora_alpha"]) / int(lora["r"])
        how = {"lora-file": ("lora_alpha / r recorded in the file's lora_adapter_metadata header" if lora_metadata
                             else f"lora_alpha / r = {scale:g} folded into lora_B (diffusers reads lora_alpha = r)"),
               "peft": "lora_alpha in adapter_config.json", "model-folder": "merged into the base weights"}[layout]
        rows.append(("LoRA", f"r = {lora['r']}, lora_alpha = {lora['lora_alpha']:g}; {how}"))
        rows.append(("LoRA targets", ", ".join(lora["target_modules"])))
    rows.append(("files", files))
    convention = (_RECTIFIED_FLOW if spec["kind"] == "diffusers-sd3" or spec.get("convention") == "rectified-flow"
                  else _FLOWSTEER_TIME)
    text = ["---", f"library_name: {'peft' if layout == 'peft' else 'diffusers'}",
            "tags: [flowsteer" + (", lora" if lora and layout != "model-folder" else "") + "]", "---", "",
            f"# {Path(str(run) or str(out)).name} (flowsteer export)", "",
            f"Exported by flowsteer {__version__} from the run `{Path(str(run)).resolve() if str(run) else '?'}`.", "",
            "| | |", "|---|---|", *[f"| {k} | {_cell(v)} |" for k, v in rows], ""]
    final = cfg.get("final") or {}
    if final:
        text += ["## Final metrics", "", "| metric | value |", "|---|---|",
                 *[f"| {k} | {_cell(_number(v))} |" for k, v in sorted(final.items())], ""]
    text += ["## Time convention", "", f"Trained in {convention}.", ""]
    norm = (cfg.get("data") or {}).get("normalizer")
    if norm and spec["kind"] == "diffusers-unet2d":
        text += [(f"Samples are in the model's units: data = x * std + mean with mean {norm.get('mean')} and std "
                  f"{norm.get('std')}."), ""]
    text += ["## Use", "", "```python", usage_snippet(cfg, out, layout).rstrip("\n"), "```", ""]
    return "\n".join(text)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")
