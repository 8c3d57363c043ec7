"""Couplings of a minibatch of noise ``x0`` with a minibatch of data ``x1``.

Every coupling returns the **indices** it used, so per-sample side data
(reward weights, labels) can follow the pairs::

    pairs = coupling(x0, x1)
    weights = weights[pairs.index1]          # weight i belongs to pairs.x1[i]

With equal batch sizes each coupling returns a **permutation** of ``x1``
(never pairs drawn with replacement, unlike torchcfm's OT sampler, whose
unreturned re-sampling misaligns side data: torchcfm issue #142).

* :class:`IndependentCoupling`: the identity pairing (x0 is fresh noise, so
  pairing in order is already independent).
* :class:`ExactOTCoupling`: the permutation minimising ``sum_i ||x0_i - x1_sigma(i)||^2``
  (POT ``ot.emd``).
* :class:`SinkhornCoupling`: entropic OT (POT ``ot.sinkhorn``), then one
  permutation drawn from the entropic plan by perturb-and-MAP: the assignment
  maximising ``sum_i log P_{i sigma(i)} + G_{i sigma(i)}`` with Gumbel noise G.
  As ``reg -> 0`` this tends to the exact-OT permutation.
"""

from __future__ import annotations

from .config import COUPLINGS  # noqa: F401 (re-exported)

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError


@dataclass(frozen=True)
class CoupledBatch:
    """A coupled minibatch.

    Attributes:
        x0: ``[B, *D]`` noise, ``x0 = x0_in[index0]``.
        x1: ``[B, *D]`` data, ``x1 = x1_in[index1]``.
        index0: ``[B]`` long, rows of the input ``x0`` used.
        index1: ``[B]`` long, rows of the input ``x1`` used.
    """

    x0: Tensor
    x1: Tensor
    index0: Tensor
    index1: Tensor


class Coupling(Protocol):
    name: str

    def __call__(self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None) -> CoupledBatch:
        ...


def _squared_cost(x0: Tensor, x1: Tensor) -> np.ndarray:
    a = x0.detach().reshape(x0.shape[0], -1).to(torch.float64)
    b = x1.detach().reshape(x1.shape[0], -1).to(torch.float64)
    cost = torch.cdist(a, b, p=2.0) ** 2
    return cost.cpu().numpy()


def _plan_to_permutation(plan: np.ndarray) -> np.ndarray:
    """Read the permutation off an exact-OT plan between uniform equal-size marginals."""
    perm = plan.argmax(axis=1)
    if np.unique(perm).size != perm.size:  # degenerate (fractional) vertex: round it exactly
        from scipy.optimize import linear_sum_assignment

        _, perm = linear_sum_assignment(-plan)
    return perm


def _sample_pairs_from_plan(plan: np.ndarray, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Unequal sizes: draw ``n`` pairs from the plan (indices returned, so side data follows)."""
    device = generator.device if generator is not None else "cpu"
    flat = torch.as_tensor(np.asarray(plan).reshape(-1), dtype=torch.float64, device=device).clamp_min(0)
    choice = torch.multinomial(flat / flat.sum(), n, replacement=True, generator=generator)
    return choice // plan.shape[1], choice % plan.shape[1]


def _gather(x0: Tensor, x1: Tensor, i0: Tensor, i1: Tensor) -> CoupledBatch:
    i0 = i0.to(device=x0.device, dtype=torch.long)
    i1 = i1.to(device=x1.device, dtype=torch.long)
    return CoupledBatch(x0=x0[i0], x1=x1[i1], index0=i0, index1=i1)


class IndependentCoupling:
    """Pair ``x0[i]`` with ``x1[i]`` (independent when x0 is fresh noise)."""

    name = "independent"

    def __call__(self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None) -> CoupledBatch:
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"independent coupling needs equal batch sizes, got {x0.shape[0]} and {x1.shape[0]}")
        idx = torch.arange(x0.shape[0], device=x0.device)
        return CoupledBatch(x0=x0, x1=x1, index0=idx, index1=idx.to(x1.device))


class ExactOTCoupling:
    """Minibatch exact OT on squared Euclidean cost (POT ``ot.emd``)."""

    name = "ot"

    def __call__(self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None) -> CoupledBatch:
        import ot  # POT; imported on first use (it costs ~2 s)

        cost = _squared_cost(x0, x1)
        n0, n1 = cost.shape
        plan = ot.emd(np.full(n0, 1.0 / n0), np.full(n1, 1.0 / n1), cost, numItermax=1_000_000)
        if n0 == n1:
            perm = torch.from_numpy(_plan_to_permutation(plan))
            return _gather(x0, x1, torch.arange(n0, device=x0.device), perm)
        i0, i1 = _sample_pairs_from_plan(plan, n0, generator)
        return _gather(x0, x1, i0, i1)


class SinkhornCoupling:
    """Entropic OT (POT ``ot.sinkhorn``), one permutation drawn from the plan.

    Args:
        reg: entropic regularisation, relative to the mean cost of the batch
            (scale-free: ``reg = 0.05`` means 5 % of the mean squared distance).
    """

    name = "sinkhorn"

    def __init__(self, reg: float = 0.05) -> None:
        if not reg > 0:
            raise ConfigError(f"sinkhorn reg must be > 0, got {reg}")
        self.reg = float(reg)

    def plan(self, x0: Tensor, x1: Tensor) -> np.ndarray:
        """The entropic plan, computed where the samples are (POT's torch backend: on the GPU for CUDA tensors)."""
        import ot

        a = x0.detach().reshape(x0.shape[0], -1).to(torch.float64)
        b = x1.detach().reshape(x1.shape[0], -1).to(torch.float64)
        cost = torch.cdist(a, b, p=2.0) ** 2
        n0, n1 = cost.shape
        scale = cost.mean().clamp_min(1e-12)
        plan = ot.sinkhorn(torch.full((n0,), 1.0 / n0, dtype=torch.float64, device=cost.device),
                           torch.full((n1,), 1.0 / n1, dtype=torch.float64, device=cost.device), cost / scale,
                           self.reg, method="sinkhorn_log", numItermax=10_000, stopThr=1e-6)
        return plan.cpu().numpy()

    def __call__(self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None) -> CoupledBatch:
        import ot

        plan = self.plan(x0, x1)
        n0, n1 = plan.shape
        if n0 != n1:
            i0, i1 = _sample_pairs_from_plan(plan, n0, generator)
            return _gather(x0, x1, i0, i1)
        device = generator.device if generator is not None else "cpu"
        uniform = torch.rand(plan.shape, generator=generator, dtype=torch.float64, device=device).clamp_(1e-12, 1 - 1e-12)
        gumbel = (-torch.log(-torch.log(uniform))).cpu().numpy()
        score = np.log(np.maximum(plan, 1e-300)) + gumbel
        u = np.full(n0, 1.0 / n0)
        perm_plan = ot.emd(u, u, -(score - score.min()), numItermax=1_000_000)
        return _gather(x0, x1, torch.arange(n0, device=x0.device), torch.from_numpy(_plan_to_permutation(perm_plan)))




def build_coupling(name: str, *, reg: float = 0.05) -> Coupling:
    """A coupling by name: ``independent``, ``ot`` (exact) or ``sinkhorn``."""
    if name == "independent":
        return IndependentCoupling()
    if name in ("ot", "exact-ot"):
        return ExactOTCoupling()
    if name == "sinkhorn":
        return SinkhornCoupling(reg)
    raise ConfigError(f"unknown coupling {name!r}; choose one of {', '.join(COUPLINGS)}")
