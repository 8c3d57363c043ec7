"""ORW's sampling policy theta_old: the trained tensors as they were at the last refresh."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from ..distributed import unwrap
from ..models.weights import has_lora, swapped_weights, trainable_state_dict


class LaggedPolicy:
    """The sampling policy theta_old of ORW: the trained tensors as they were at the last refresh.

    A full model is copied once (``deepcopy``) and refreshed with ``load_state_dict``; a LoRA model keeps
    only its adapter tensors, swapped into the live network for each rollout
    (:func:`~flowsteer.models.lora.swapped_weights`), so the base weights exist once.
    """

    def __init__(self, model: nn.Module) -> None:
        model = unwrap(model)
        self.adapter_only = has_lora(model)
        self.net: nn.Module | None = None
        self.weights: dict[str, Tensor] = {}
        if self.adapter_only:
            self.weights = {k: v.detach().clone() for k, v in trainable_state_dict(model).items()}
        else:
            self.net = copy.deepcopy(model).eval()
            for p in self.net.parameters():
                p.requires_grad_(False)

    def refresh(self, model: nn.Module, *, decay: float = 0.0) -> None:
        """theta_old <- theta (``decay`` 0), or the soft update ``decay theta_old + (1 - decay) theta`` of the floating
        tensors (integer buffers are copied)."""
        model = unwrap(model)
        if self.net is not None and decay == 0:
            self.net.load_state_dict(model.state_dict())
            return
        old = self.net.state_dict() if self.net is not None else self.weights
        new = model.state_dict() if self.net is not None else trainable_state_dict(model)
        with torch.no_grad():
            for k, v in new.items():
                if decay and old[k].is_floating_point():
                    old[k].lerp_(v.to(old[k].dtype), 1 - decay)
                else:
                    old[k].copy_(v)

    @contextlib.contextmanager
    def network(self, model: nn.Module) -> Iterator[nn.Module]:
        """The network to roll out with (``model`` itself, adapters swapped, for LoRA)."""
        model = unwrap(model)
        if self.net is not None:
            yield self.net
            return
        was_training = model.training
        with swapped_weights(model, self.weights):
            model.eval()
            try:
                yield model
            finally:
                model.train(was_training)

    def state_dict(self) -> dict[str, Tensor]:
        return self.net.state_dict() if self.net is not None else self.weights

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.net is not None:
            self.net.load_state_dict(state)
            return
        if set(self.weights) != set(state):
            raise ValueError("the saved sampling policy does not match the model's adapter tensors")
        for k, v in state.items():
            self.weights[k].copy_(v)
