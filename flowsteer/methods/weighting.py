"""Reward weights of a batch: ORW's ``exp(tau r)`` normalised by its mean, and the anchor's two-part mixture.

``reward_weights`` is the weight of ORW, ORW-W2 and RWR (module doc of :mod:`flowsteer.methods.orw`; RAFT keeps a
top fraction instead).
``anchor_mixture_weights`` weights a batch whose last ``a`` samples come from the anchor set
(:mod:`flowsteer.methods.fixed_set`): the policy's part by ``exp(tau r)``, the anchor's by ``exp(n tau r)`` in
phase n, each normalised to mean 1, so that the batch's target is the ``(B - a, a)`` mixture of
``q_{n-1} exp(tau r)`` and ``q0 exp(n tau r)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..rewards import RewardError

__all__ = ["anchor_mixture_weights", "reward_weights"]


def reward_weights(r: Tensor, *, tau: float, normalize: str = "mean", standardize: bool = False,
                   valid: Tensor | None = None, source: str = "") -> Tensor:
    """Weights ``w_i`` of a batch of rewards ``r`` (``[B]``).

    ``normalize="mean"``: ``w = B' softmax(tau r)`` over the ``B'`` valid samples
    (= exp(tau r) / mean exp(tau r)); ``"none"``: ``w = exp(tau r)``.  Invalid
    samples (``valid == False``) get weight 0.  Never returns NaN.  Raw weights that overflow, or that
    underflow to 0 for every sample (the step would learn nothing), raise RewardError (``source``, e.g.
    "reward 'X' at step 7", starts the message).
    """
    if valid is None:
        valid = torch.isfinite(r)
    z = torch.where(valid, r, torch.zeros_like(r))
    if standardize:
        zs = z[valid]
        std = zs.std() if zs.numel() > 1 else torch.ones((), device=r.device)
        z = (z - zs.mean()) / std.clamp_min(1e-8)
    logw = tau * z
    if normalize == "mean":
        logw = torch.where(valid, logw, torch.full_like(logw, -math.inf))
        w = torch.softmax(logw, dim=0) * valid.sum()
    else:
        w = torch.where(valid, torch.exp(logw), torch.zeros_like(logw))
        # one host read for both checks (the step has just read its rewards' validity anyway)
        overflow, underflow = torch.stack([~torch.isfinite(w).all(), valid.any() & (w.amax() == 0)]).tolist()
        if overflow or underflow:
            top = torch.where(valid, logw, torch.full_like(logw, -math.inf)).max().item()
            if overflow:
                raise RewardError(f"{source}raw weights exp(tau*r) overflowed (max tau*r = {top:.1f}); use --weights "
                                  "mean or a smaller --tau")
            raise RewardError(f"{source}raw weights exp(tau*r) underflowed to 0 for every sample (max tau*r = "
                              f"{top:.1f}), so the step would learn nothing from the reward; use --weights mean, a "
                              "smaller --tau, or shift the reward up")
    return w


def anchor_mixture_weights(r: Tensor, valid: Tensor, *, anchor_size: int, tau: float, phase: int,
                           source: str = "") -> tuple[Tensor, Tensor]:
    """Weights ``[B]`` of a batch whose last ``anchor_size`` samples are the anchor's, and the anchor part's Kish
    effective sample size ``(sum w)^2 / sum w^2`` (a device scalar: at a large ``phase * tau`` few of the fixed
    samples carry the weight).  ``r``, ``valid``: ``[B]``; ``phase``: n, 1-based."""
    p = r.shape[0] - anchor_size
    anchor = reward_weights(r[p:], tau=phase * tau, valid=valid[p:], source=source)
    policy = reward_weights(r[:p], tau=tau, valid=valid[:p], source=source)
    return torch.cat([policy, anchor]), anchor.sum() ** 2 / (anchor * anchor).sum()
