"""Velocity networks and the registry that rebuilds them from a config.

A model spec is a plain dict saved in a run's ``config.json``::

    {"kind": "mlp", "shape": [2], "hidden": 256, "depth": 3, "num_classes": 0}
    {"kind": "unet", "shape": [1, 8, 8], "base_channels": 32, "channel_mult": [1, 2]}
"""

from __future__ import annotations

from ..config import MODEL_KINDS  # noqa: F401 (re-exported)

from typing import Any

from torch import nn

from ..errors import ConfigError
from .mlp import MLPVelocity
from .protocol import VelocityModel, XTModel
from .unet import UNetVelocity


__all__ = ["MLPVelocity", "UNetVelocity", "VelocityModel", "XTModel", "build_model", "default_model_spec", "MODEL_KINDS"]


def default_model_spec(kind: str, shape: tuple[int, ...], *, num_classes: int = 0) -> dict[str, Any]:
    """The built-in architecture for ``kind`` at data ``shape``.

    ``auto`` picks the MLP: it is the fast choice on CPU for vectors and for
    8x8 digits; choose ``unet`` for larger images.
    """
    shape = tuple(int(s) for s in shape)
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
    raise ConfigError(f"unknown model {kind!r}; choose one of auto, {', '.join(MODEL_KINDS)}")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a built-in network from its spec dict."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "mlp":
        spec["shape"] = tuple(spec["shape"])
        return MLPVelocity(**spec)
    if kind == "unet":
        spec["shape"] = tuple(spec["shape"])
        spec["channel_mult"] = tuple(spec["channel_mult"])
        return UNetVelocity(**spec)
    raise ConfigError(f"unknown model kind {kind!r} in the run's config; expected one of {', '.join(MODEL_KINDS)}")
