"""Adapters that put other libraries' networks behind flowsteer's ``v = model(t, x, **cond)`` protocol.

flowsteer's convention: ``t`` in [0, 1] runs from noise (t = 0) to data (t = 1), ``x_t = t x1 + (1 - t) x0``
and the network predicts ``u = x1 - x0``.

* :class:`DiffusersUNet2DVelocity`: a diffusers ``UNet2DModel`` (pixel space).  Its timestep embedding is
  built for integer steps 0..999, so ``t`` is passed as ``1000 t`` (``time_scale``); with
  ``convention="rectified-flow"`` it is read as a model trained with diffusers' flow-matching scheduler
  instead (see below).
* :class:`SD3Velocity`: a diffusers ``SD3Transformer2DModel`` (latent space, text conditioning).  SD3 runs
  the other way: ``x_s = (1 - s) x_data + s noise`` with ``s`` = sigma from 1 (noise) to 0 (data), the
  timestep is ``1000 s`` and the network predicts ``noise - x_data = dx/ds``.  With ``s = 1 - t``::

      v_flowsteer(t, x) = -F(x, timestep = 1000 (1 - t)),

  so one Euler step ``x + dt v`` equals the scheduler's ``x + (s_next - s) F`` (``dt = s - s_next``).
* Modules called the torchcfm way, ``net(t, x)`` or ``net(t, x, y)``, already follow the protocol; the
  ``module`` model kind (see :func:`flowsteer.models.build_model`) builds them from ``"pkg.mod:Class"``
  without importing torchcfm, and :class:`~flowsteer.models.XTModel` wraps ``net(x, t)`` ones.

The diffusers classes are imported lazily: the core never needs the ``diffusers`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..extras import require

CONVENTIONS = ("flowsteer", "rectified-flow")


def _timestep(t: Tensor, x: Tensor, convention: str, scale: float) -> tuple[Tensor, float]:
    """The wrapped model's timestep for flowsteer's ``t`` ``[B]``, and the sign of its output."""
    t = t.to(x.dtype).reshape(-1).expand(x.shape[0])
    if convention == "rectified-flow":
        return (1.0 - t) * scale, -1.0
    return t * scale, 1.0


class DiffusersUNet2DVelocity(nn.Module):
    """``v(t, x, y) `` from a diffusers ``UNet2DModel``.

    Args:
        unet: the ``UNet2DModel`` (``sample`` ``[B, C, H, W]``; ``class_labels`` ``[B]`` when it has a class embedding).
        time_scale: timestep units per unit of t (1000 for diffusers' schedulers).
        convention: ``flowsteer`` (timestep ``1000 t``, output = velocity) or ``rectified-flow``
            (timestep ``1000 (1 - t)``, output = ``noise - data``, negated here).
    """

    def __init__(self, unet: nn.Module, *, time_scale: float = 1000.0, convention: str = "flowsteer") -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ConfigError(f"unknown time convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
        self.unet, self.time_scale, self.convention = unet, float(time_scale), convention

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        timestep, sign = _timestep(t, x, self.convention, self.time_scale)
        out = self.unet(x, timestep, class_labels=y, return_dict=False)[0]
        return sign * out


class SD3Velocity(nn.Module):
    """``v(t, x, encoder_hidden_states, pooled_projections)`` from an ``SD3Transformer2DModel``.

    Shapes: ``x`` ``[B, C, H, W]`` latents (scaled as the pipeline scales them);
    ``encoder_hidden_states`` ``[B, L, joint_attention_dim]``; ``pooled_projections`` ``[B, pooled_dim]``.
    See the module doc for the time map.
    """

    def __init__(self, transformer: nn.Module, *, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.transformer, self.time_scale = transformer, float(time_scale)

    def forward(self, t: Tensor, x: Tensor, encoder_hidden_states: Tensor, pooled_projections: Tensor) -> Tensor:
        timestep, sign = _timestep(t, x, "rectified-flow", self.time_scale)
        out = self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                               pooled_projections=pooled_projections, return_dict=False)[0]
        return sign * out


# --------------------------------------------------------------------------- folders on disk


def diffusers_folder_kind(path: str | Path) -> tuple[str, str | None]:
    """``(kind, subfolder)`` of a diffusers folder: a pipeline (``model_index.json``) or a bare model."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"diffusers:{path}: no such folder; pass a folder written by save_pretrained")
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        if "transformer" in index and (path / "transformer").is_dir():
            cls = json.loads((path / "transformer" / "config.json").read_text(encoding="utf-8")).get("_class_name")
            if cls == "SD3Transformer2DModel":
                return "diffusers-sd3", "transformer"
        if "unet" in index and (path / "unet").is_dir():
            return "diffusers-unet2d", "unet"
        raise ConfigError(f"diffusers:{path}: the pipeline {index.get('_class_name')!r} has neither an SD3 transformer "
                          "nor a UNet2DModel; flowsteer adapts UNet2DModel and SD3Transformer2DModel")
    config = path / "config.json"
    if config.is_file():
        cls = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
        if cls == "UNet2DModel":
            return "diffusers-unet2d", None
        if cls == "SD3Transformer2DModel":
            return "diffusers-sd3", None
        raise ConfigError(f"diffusers:{path}: model class {cls!r} is not supported; use UNet2DModel or SD3Transformer2DModel")
    raise ConfigError(f"diffusers:{path}: no model_index.json or config.json; pass a folder written by save_pretrained")


def build_diffusers_model(spec: dict[str, Any]) -> nn.Module:
    """Build a ``diffusers-unet2d`` / ``diffusers-sd3`` spec: from ``pretrained`` weights if given, else its config."""
    diffusers = require("diffusers", "diffusers")
    cls = diffusers.UNet2DModel if spec["kind"] == "diffusers-unet2d" else diffusers.SD3Transformer2DModel
    if spec.get("pretrained"):
        net = cls.from_pretrained(spec["pretrained"], subfolder=spec.get("subfolder"))
    else:
        net = cls.from_config(spec["config"])
    if spec["kind"] == "diffusers-unet2d":
        return DiffusersUNet2DVelocity(net, time_scale=spec.get("time_scale", 1000.0),
                                       convention=spec.get("convention", "flowsteer"))
    return SD3Velocity(net, time_scale=spec.get("time_scale", 1000.0))


def diffusers_model_spec(path: str | Path, *, convention: str = "flowsteer") -> dict[str, Any]:
    """The model spec (``config.json``'s ``model``) of a diffusers folder, pointing at its weights."""
    path = Path(path).resolve()
    kind, sub = diffusers_folder_kind(path)
    config = json.loads(((path / sub) if sub else path).joinpath("config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if kind == "diffusers-unet2d":
        size = config.get("sample_size") or 32
        size = list(size) if isinstance(size, (list, tuple)) else [size, size]
        shape = [config.get("in_channels", 3), *size]
        num_classes = int(config.get("num_class_embeds") or 0)
        return {"kind": kind, "pretrained": str(path), "subfolder": sub, "config": config, "shape": shape,
                "num_classes": num_classes, "convention": convention, "time_scale": 1000.0}
    size = config.get("sample_size", 128)
    return {"kind": kind, "pretrained": str(path), "subfolder": sub, "config": config, "num_classes": 0,
            "shape": [config.get("in_channels", 16), size, size], "time_scale": 1000.0}


def absent_components(root: str | Path) -> list[str]:
    """The SD3 pipeline components a folder saved as null (a tiny or T5-less SD3): load it with them as None."""
    index = Path(root) / "model_index.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text(encoding="utf-8"))
    return [k for k in ("text_encoder_3", "tokenizer_3") if not (entries.get(k) or [None])[0]]


def encode_prompt(cfg: dict[str, Any], prompt: str, model: nn.Module) -> dict[str, Tensor]:
    """``{"encoder_hidden_states": [1, L, D], "pooled_projections": [1, P]}`` from the SD3 pipeline's encoders.

    The pipeline's own ``encode_prompt`` runs (CLIP-L, CLIP-G and T5, or zeros where the folder has no T5),
    with the already-loaded transformer passed in so that its weights are not loaded twice.
    """
    diffusers = require("diffusers", "diffusers")
    root = cfg["model"]["pretrained"]
    if not (Path(root) / "model_index.json").is_file():
        raise ConfigError(f"diffusers:{root} is a bare transformer; --prompt needs the pipeline folder (with its text "
                          "encoders) to encode the prompt")
    absent = dict.fromkeys(absent_components(root))
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(root, transformer=model.transformer, vae=None, **absent)
    with torch.inference_mode():
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None,
                                                  do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds.clone().float(), "pooled_projections": pooled.clone().float()}


class VaeDecoder:
    """Latents (as the SD3 pipeline scales them) -> images ``[B, 3, H, W]`` in [0, 1], without gradients.

    ``x = vae.decode(z / scaling_factor + shift_factor)``, mapped from [-1, 1] to [0, 1] as the pipeline's
    post-processing does.  Decoded in chunks of ``batch`` to bound memory.
    """

    def __init__(self, vae: nn.Module, *, batch: int = 64) -> None:
        self.vae, self.batch = vae.eval(), batch
        for p in vae.parameters():
            p.requires_grad_(False)

    def __call__(self, z: Tensor) -> Tensor:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        out = []
        with torch.no_grad():
            for chunk in z.split(self.batch):
                x = self.vae.decode(chunk / cfg.scaling_factor + shift, return_dict=False)[0]
                out.append((x / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)


def build_decoder(spec: dict[str, Any], *, device: torch.device | str = "cpu") -> VaeDecoder:
    """The decoder of a latent run's ``config.json`` (``data.decoder``), on ``device`` (where the latents are)."""
    diffusers = require("diffusers", "diffusers")
    if spec.get("kind") != "vae":
        raise ConfigError(f"unknown decoder {spec.get('kind')!r} in the run's config; expected vae")
    vae = diffusers.AutoencoderKL.from_pretrained(spec["pretrained"], subfolder=spec.get("subfolder"))
    return VaeDecoder(vae.to(device))
