"""LoRA through peft: train low-rank adapters only, and read the base model through the same weights.

``W x`` becomes ``W x + (alpha / r) B A x`` with ``A`` ``[r, in]`` (random) and ``B`` ``[out, r]`` (zeros), so a
fresh adapter leaves the model's output unchanged.  The base weights are frozen; the optimiser, the EMA, the
checkpoints and the lagged sampling policy see the adapter tensors only.  The reference velocity ``v_ref``
of ORW-CFM-W2 is the same module run with its adapters disabled (:class:`AdapterDisabled`), not a second
copy of the weights.

Requires the ``peft`` package (``pip install 'flowsteer[diffusers]'``); nothing here is imported by the core.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from torch import Tensor, nn

from ..extras import require
from ..io import json_safe
from .weights import trainable_state_dict

# diffusers' own LoRA scripts target these projections
SD3_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
               "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def inner_module(model: nn.Module) -> nn.Module:
    """The wrapped library network (diffusers transformer / UNet) or the model itself."""
    for name in ("transformer", "unet"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return model


def default_targets(model: nn.Module) -> list[str]:
    """Attention projections for diffusers models; every ``nn.Linear`` for other networks."""
    inner = inner_module(model)
    kind = type(inner).__name__
    if kind == "SD3Transformer2DModel":
        return SD3_TARGETS
    if kind == "UNet2DModel":
        return UNET_TARGETS
    return sorted({name for name, m in inner.named_modules() if isinstance(m, nn.Linear)})


def lora_spec(model: nn.Module, *, rank: int, alpha: float | None = None, targets: list[str] | None = None) -> dict:
    """The ``lora`` entry of a model spec: ``{"r", "lora_alpha", "target_modules"}``."""
    return {"r": int(rank), "lora_alpha": float(alpha if alpha is not None else rank),
            "target_modules": list(targets or default_targets(model))}


def add_lora(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Inject LoRA layers (peft) into ``model``'s network in place and freeze everything else."""
    peft = require("peft", "diffusers")
    config = peft.LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], target_modules=spec["target_modules"],
                             lora_dropout=0.0, init_lora_weights=True)
    peft.inject_adapter_in_model(config, inner_module(model))
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base: every LoRA layer bypassed, then restored (requires_grad included)."""
    layers = tuner_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class AdapterDisabled(nn.Module):
    """The base model seen through a LoRA model: ``model(t, x, **cond)`` with the adapters disabled.

    It holds no parameters of its own (the model is not registered as a submodule), so freezing or moving
    this view never touches the trained adapters.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._target = (model,)

    def forward(self, t: Tensor, x: Tensor, **cond: Any) -> Tensor:
        model = self._target[0]
        with adapters_disabled(model):
            return model(t, x, **cond)


def adapter_tensors(model: nn.Module, weights: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The adapter tensors keyed as peft saves them, relative to the library network.

    ``transformer.transformer_blocks.0.attn.to_q.lora_A.default.weight`` (flowsteer's wrapper, peft's adapter
    name) becomes ``transformer_blocks.0.attn.to_q.lora_A.weight``.  ``weights``: the tensors to convert
    (default: the model's own adapter tensors, e.g. an EMA copy instead).
    """
    inner = inner_module(model)
    prefix = next((n + "." for n, m in model.named_children() if m is inner), "")
    if weights is None:
        weights = trainable_state_dict(model)
    return {k[len(prefix):].replace(".default.", "."): v.detach().contiguous() for k, v in weights.items()}


def peft_config(spec: dict[str, Any]) -> dict[str, Any]:
    """peft's ``adapter_config.json`` contents for a ``lora`` spec (JSON-ready)."""
    peft = require("peft", "diffusers")
    config = peft.LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], target_modules=spec["target_modules"])
    return json_safe(_plain(config.to_dict()))


def _plain(obj: Any) -> Any:
    """Plain JSON data of peft's config values: sets as sorted lists, enums as their values, others as text."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [_plain(v) for v in sorted(obj)]
    for kind in (bool, str, int, float):  # subclasses (str and int enums) as their plain values
        if isinstance(obj, kind):
            return kind(obj) if kind is not str else str.__str__(obj)
    return None if obj is None else str(obj)


def inject_saved_adapter(network: nn.Module, config_folder: str | Path, tensors: dict[str, Tensor]) -> nn.Module:
    """Load a peft adapter (its config folder and tensors) into a base library network in place, as a peft
    user would: ``inject_adapter_in_model`` + ``set_peft_model_state_dict``."""
    peft = require("peft", "diffusers")
    config = peft.LoraConfig.from_pretrained(str(config_folder))
    peft.inject_adapter_in_model(config, network)
    result = peft.set_peft_model_state_dict(network, tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"adapter keys not in the network: {unexpected[:3]}")
    return network
