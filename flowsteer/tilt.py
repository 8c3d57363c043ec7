"""The KL-regularised optimum ``q_beta ~ q0 exp(r / beta)``, predicted from the base's own samples.

``q_beta`` maximises ``E_q[r] - beta KL(q || q0)``.  Theorem 2 of ORW-CFM-W2 says that ORW without the W2 term
reaches ``q0 exp(N tau r)`` after N refreshes, so ``align --method orw --target-beta BETA`` (N = 1/(BETA tau))
aims at ``q_beta`` and then stops sharpening.  Before any training, samples ``x_i ~ q0`` with rewards ``r_i``
predict what ``q_beta`` holds, by self-normalised importance weights::

    w_i = exp(r_i / beta) / sum_j exp(r_j / beta)  ( = softmax(r / beta) ),   E_{q_beta}[f] ~ sum_i w_i f(x_i)

so the share of each class under ``q_beta`` is the weight of the samples labelled with it.  The estimate is
only as good as its effective sample size ``1 / sum_i w_i^2``: a small beta puts the weight on a few samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .metrics import entropy

__all__ = ["TiltPrediction", "choose_beta", "predict_tilt", "tilt_weights"]


def tilt_weights(rewards: Tensor, beta: float) -> Tensor:
    """Self-normalised weights ``[N]`` of ``q0 exp(r / beta)`` for samples of ``q0`` with ``rewards`` ``[N]``
    (float64; they sum to 1)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.softmax(rewards.detach().double().flatten() / beta, dim=0)


@dataclass(frozen=True)
class TiltPrediction:
    """What ``q0 exp(r / beta)`` holds, estimated from N samples of ``q0``.

    Attributes:
        beta: the temperature.  class_shares: ``[C]`` share of each class under the tilt.
        rewarded_share: the summed share of the rewarded classes.  class_entropy: entropy of ``class_shares``
        (nats).  mean_reward: ``E_{q_beta}[r]``.  effective_samples: ``1 / sum w_i^2`` (of N).
    """

    beta: float
    class_shares: tuple[float, ...]
    rewarded_share: float
    class_entropy: float
    mean_reward: float
    effective_samples: float


def predict_tilt(rewards: Tensor, labels: Tensor, *, beta: float, num_classes: int,
                 rewarded: tuple[int, ...]) -> TiltPrediction:
    """Predict ``q0 exp(r / beta)`` from samples of ``q0``: ``rewards`` ``[N]`` and class ``labels`` ``[N]``
    (from any classifier, e.g. an independent judge); ``rewarded``: the classes whose share is summed."""
    if rewards.shape[0] != labels.shape[0]:
        raise ValueError(f"rewards ({rewards.shape[0]}) and labels ({labels.shape[0]}) must count the same samples")
    w = tilt_weights(rewards, beta)
    shares = torch.zeros(num_classes, dtype=torch.float64, device=w.device).index_add_(0, labels.long().flatten(), w)
    shares_np = shares.cpu().numpy()
    return TiltPrediction(
        beta=float(beta), class_shares=tuple(float(s) for s in shares_np),
        rewarded_share=float(shares_np[list(rewarded)].sum()), class_entropy=entropy(np.clip(shares_np, 0, None)),
        mean_reward=float((w * rewards.double().flatten()).sum()), effective_samples=float(1.0 / (w * w).sum()))


def choose_beta(rewards: Tensor, labels: Tensor, *, betas: tuple[float, ...], min_share: float, num_classes: int,
                rewarded: tuple[int, ...]) -> tuple[float, list[TiltPrediction]]:
    """The largest of ``betas`` (the least sharpened tilt, so the most diverse) whose predicted share of the
    ``rewarded`` classes is at least ``min_share``; the smallest beta when none reaches it.  Returns it with the
    prediction at every beta (largest first)."""
    table = [predict_tilt(rewards, labels, beta=b, num_classes=num_classes, rewarded=rewarded)
             for b in sorted(betas, reverse=True)]
    chosen = next((p.beta for p in table if p.rewarded_share >= min_share), table[-1].beta)
    return chosen, table
