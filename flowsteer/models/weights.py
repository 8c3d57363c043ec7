"""Which tensors a run trains, saves and averages, and running a network with other weights swapped in.

peft-free: a LoRA model is recognised by its parameter names (``.lora_``), so the training loop and the
run folder need no optional dependency.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` carries LoRA adapter parameters (peft's ``lora_A`` / ``lora_B``)."""
    return any(".lora_" in name for name, _ in model.named_parameters())


def trainable_state_dict(model: nn.Module, *, keep_vars: bool = False) -> dict[str, Tensor]:
    """What a run saves and averages: the adapter tensors of a LoRA model, else the whole state dict."""
    state = model.state_dict(keep_vars=keep_vars)
    if not has_lora(model):
        return state
    return {k: v for k, v in state.items() if ".lora_" in k}


def load_trainable_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load :func:`trainable_state_dict` output: strict for full models; for LoRA, exactly the adapter keys."""
    if not has_lora(model):
        model.load_state_dict(state, strict=True)
        return
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"adapter weights do not match the model (missing {missing}, unexpected {extra})")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def swapped_weights(model: nn.Module, weights: dict[str, Tensor]) -> Iterator[nn.Module]:
    """Run ``model`` with ``weights`` (a subset of its state dict) copied in; the live values come back after.

    Used to sample with an EMA or a lagged policy that lives as a few tensors (a LoRA adapter) instead
    of as a second copy of the network.  The restore is an exact copy, so training is unaffected.
    """
    live = model.state_dict(keep_vars=True)
    saved = {k: live[k].detach().clone() for k in weights}
    with torch.no_grad():
        for k, v in weights.items():
            live[k].copy_(v)
    try:
        yield model
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                live[k].copy_(v)
