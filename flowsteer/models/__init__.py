"""Velocity networks and the registry that rebuilds them from a config.

A model spec is a plain dict saved in a run's ``config.json``::

    {"kind": "mlp", "shape": [2], "hidden": 256, "depth": 3, "num_classes": 0}
    {"kind": "unet", "shape": [1, 8, 8], "base_channels": 32, "channel_mult": [1, 2]}
    {"kind": "diffusers-unet2d", "pretrained": DIR, "config": {...}, "shape": [C, H, W]}   (extra: diffusers)
    {"kind": "diffusers-sd3", "pretrained": DIR, "subfolder": "transformer", "config": {...}, "shape": [...]}
    {"kind": "module", "target": "pkg.mod:Class", "kwargs": {...}, "call": "t,x" | "x,t", "shape": [...]}

Any spec may carry ``"lora": {"r", "lora_alpha", "target_modules"}``: the network is built, then LoRA
layers are injected (peft) and only they train (see :mod:`flowsteer.models.lora`).  On the command line
``--model`` takes ``auto``, ``mlp``, ``unet``, ``diffusers:DIR`` or ``module:pkg.mod:Class``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from ..config import MODEL_KINDS
from ..errors import ConfigError
from .adapters import build_diffusers_model, diffusers_model_spec
from .lora import add_lora
from .mlp import MLPVelocity
from .protocol import VelocityModel, XTModel
from .unet import UNetVelocity


__all__ = ["MLPVelocity", "UNetVelocity", "VelocityModel", "XTModel", "build_model", "default_model_spec",
           "enable_gradient_checkpointing", "MODEL_KINDS"]


def default_model_spec(kind: str, shape: tuple[int, ...], *, num_classes: int = 0) -> dict[str, Any]:
    """The built-in architecture for ``kind`` at data ``shape``.

    ``auto`` picks the MLP: it is the fast choice on CPU for vectors and for
    8x8 digits; choose ``unet`` for larger images.
    """
    shape = tuple(int(s) for s in shape)
    if kind.startswith("diffusers:"):
        spec = diffusers_model_spec(kind.split(":", 1)[1])
        if tuple(spec["shape"]) != shape:
            raise ConfigError(f"--model {kind}: the network takes samples of shape {tuple(spec['shape'])} but the data "
                              f"has shape {shape}; use a network built for this data")
        if num_classes and not spec["num_classes"]:
            raise ConfigError(f"--model {kind} has no class embedding; drop --conditional")
        return spec
    if kind.startswith("module:"):
        return {"kind": "module", "target": kind.split(":", 1)[1], "kwargs": {}, "call": "t,x", "shape": list(shape),
                "num_classes": num_classes}
    if kind == "auto":
        kind = "mlp"
    if kind == "mlp":
        return {"kind": "mlp", "shape": list(shape), "hidden": 384 if len(shape) > 1 or shape[0] > 16 else 256,
                "depth": 3, "time_dim": 64, "num_classes": num_classes}
    if kind == "unet":
        if len(shape) != 3:
            raise ConfigError(f"--model unet needs image data (C, H, W), but the data has shape {shape}; use --model mlp")
        size = min(shape[1:])
        mult = [1, 2] if size <= 16 else [1, 2, 2]
        return {"kind": "unet", "shape": list(shape), "base_channels": 32, "channel_mult": mult,
                "time_dim": 64, "num_classes": num_classes}
    raise ConfigError(f"unknown model {kind!r}; choose one of auto, {', '.join(MODEL_KINDS)}, diffusers:DIR, "
                      "module:pkg.mod:Class")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the network of a spec dict (and its LoRA layers, if the spec has ``lora``)."""
    spec = dict(spec)
    lora = spec.pop("lora", None)
    base_weights = spec.pop("base_weights", None)
    model = _build_network(spec)
    if base_weights:  # a LoRA trained on a base whose weights were themselves trained (a flowsteer run)
        _load_base_weights(model, base_weights)
    if lora:
        add_lora(model, lora)
    return model


def _load_base_weights(model: nn.Module, path: str) -> None:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"this LoRA run's base weights {path} are gone; the adapter needs the base run it was trained "
                          "on - restore that run folder")
    model.load_state_dict(load_file(path, device=str(next((p.device for p in model.parameters()), "cpu"))))


def _build_network(spec: dict[str, Any]) -> nn.Module:
    kind = spec.pop("kind", None)
    if kind == "mlp":
        spec["shape"] = tuple(spec["shape"])
        return MLPVelocity(**spec)
    if kind == "unet":
        spec["shape"] = tuple(spec["shape"])
        spec["channel_mult"] = tuple(spec["channel_mult"])
        return UNetVelocity(**spec)
    if kind in ("diffusers-unet2d", "diffusers-sd3"):
        return build_diffusers_model({"kind": kind, **spec})
    if kind == "module":
        return _build_module(spec)
    raise ConfigError(f"unknown model kind {kind!r} in the run's config; expected one of {', '.join(MODEL_KINDS)}, "
                      "diffusers-unet2d, diffusers-sd3, module")


def _build_module(spec: dict[str, Any]) -> nn.Module:
    """A user network named ``pkg.mod:Class``, called ``net(t, x, **cond)`` (torchcfm's order) or ``net(x, t)``."""
    target = str(spec.get("target", ""))
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--model module:{target}: cannot import it ({type(exc).__name__}); write module:pkg.mod:Class "
                          "with pkg.mod importable (on PYTHONPATH)") from None
    net = cls(**spec.get("kwargs", {}))
    if spec.get("call", "t,x") == "x,t":
        return XTModel(net, cond_keys=("y",) if spec.get("num_classes") else ())
    return net


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (diffusers models), or a one-line error for networks without it."""
    inner = next((m for m in model.modules() if hasattr(m, "enable_gradient_checkpointing")), None)
    if inner is None:
        raise ConfigError(f"--gradient-checkpointing works with diffusers models (UNet2DModel, SD3); this network "
                          f"({type(model).__name__}) has no checkpointing - drop the option")
    inner.enable_gradient_checkpointing()
