"""What a base is: the model a fine-tuning run starts from and measures itself against.

A base is a flowsteer run folder, or ``diffusers:DIR``: a folder written by diffusers' ``save_pretrained``
(a ``UNet2DModel``, or a Stable Diffusion 3 pipeline / ``SD3Transformer2DModel``) seen as a run.
:func:`base_config` reads what a base is without loading weights (for checking options before any
work); :func:`load_base` loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConfigError
from .models import build_model
from .models.adapters import diffusers_model_spec, encode_prompt
from .runs import RUN_FORMAT, RUN_FORMAT_VERSION, Run, load_run, read_config

DIFFUSERS_PREFIX = "diffusers:"


def is_diffusers(spec: str | Path) -> bool:
    return str(spec).startswith(DIFFUSERS_PREFIX)


def base_name(spec: str | Path) -> str:
    """The base as saved in ``config.json``: an absolute run folder, or ``diffusers:ABSOLUTE_DIR``."""
    if is_diffusers(spec):
        return DIFFUSERS_PREFIX + str(Path(str(spec)[len(DIFFUSERS_PREFIX):]).resolve())
    return str(Path(spec).resolve())


def diffusers_run_config(path: str | Path, *, prompt: str | None = None) -> dict[str, Any]:
    """A run ``config.json`` for a diffusers folder used as a base (``--base diffusers:DIR``)."""
    spec = diffusers_model_spec(path)
    root = Path(spec["pretrained"])
    data: dict[str, Any] = {"spec": f"diffusers:{root}", "shape": spec["shape"], "num_classes": spec["num_classes"],
                            "normalizer": {"mean": [0.0], "std": [1.0]}}
    cfg: dict[str, Any] = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "flowsteer_version": __version__,
                           "method": "diffusers", "model": spec, "data": data, "path": {"sigma": 0.0}}
    if spec["kind"] == "diffusers-sd3":
        if prompt is None:
            raise ConfigError(f"diffusers:{root} is a text-to-image model; pass --prompt TEXT")
        if (root / "vae").is_dir():
            data["decoder"] = {"kind": "vae", "pretrained": str(root), "subfolder": "vae"}
        cfg["condition"] = {"kind": "prompt", "prompt": prompt}
    elif prompt is not None:
        raise ConfigError(f"diffusers:{root} is not text-conditioned; drop --prompt")
    return cfg


def base_config(spec: str | Path, *, prompt: str | None = None) -> dict[str, Any]:
    """The config of a base (run folder or ``diffusers:DIR``), checked against ``prompt``, loading no weights."""
    if not is_diffusers(spec):
        cfg = read_config(spec)
        if prompt is not None:
            raise ConfigError("--prompt conditions a text-to-image base (--base diffusers:DIR with an SD3 pipeline); "
                              "drop it for this base")
        return cfg
    return diffusers_run_config(str(spec)[len(DIFFUSERS_PREFIX):], prompt=prompt)


def load_base(spec: str | Path, *, prompt: str | None = None, device: torch.device | str = "cpu") -> Run:
    """A run folder, or ``diffusers:DIR`` (a diffusers UNet2DModel / SD3 folder) seen as a run.

    An SD3 pipeline needs ``prompt``: it is encoded once by the pipeline's own text encoders, and its
    states condition every sample.  The pipeline's VAE decodes samples to images for the reward.
    """
    cfg = base_config(spec, prompt=prompt)
    if not is_diffusers(spec):
        return load_run(spec, device=device)
    model = build_model(cfg["model"]).eval()
    # the prompt is encoded on the CPU, where the pipeline's text encoders are loaded, then moved with the model
    embeds = encode_prompt(cfg, prompt, model) if prompt is not None else None
    model = model.to(device)
    if embeds is not None:
        embeds = {k: v.to(device) for k, v in embeds.items()}
    return Run(model=model, config=cfg, path=None, prompt_embeds=embeds)
