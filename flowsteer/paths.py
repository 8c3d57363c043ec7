"""Probability paths between noise ``x0 ~ N(0, I)`` and data ``x1``.

A path turns a coupled pair ``(x0, x1)`` and times ``t`` into a point ``x_t``
on the conditional path and the regression target the network learns there.

* :class:`LinearPath` (rectified flow / OT-CFM, sigma = 0)::

      x_t = (1 - t) x0 + t x1,          u_t = x1 - x0        (ODE velocity)

* :class:`BrownianBridgePath` (stochastic flow, sigma > 0)::

      x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z,   z ~ N(0, I)
      b_t = (x1 - x_t) / (1 - t)                             (SDE drift)

  sampled with Euler-Maruyama, ``dX = b dt + sigma dW``.  The drift target
  blows up as t -> 1 (its conditional variance is ``sigma^2 t / (1 - t)``), so
  **our choice** is to clip training times to ``t <= 1 - eps`` (``eps`` = 0.01
  by default).  The marginal drift is unchanged on ``[0, 1 - eps]``; samplers
  integrate to ``t = 1``, never ask the network at ``t > 1 - eps`` (past it they follow
  the bridge to the end point the network predicts at ``1 - eps``) and take their last step without noise (the bridge is
  pinned at t = 1), see :mod:`flowsteer.solvers`.

Shapes: ``x0``, ``x1`` are ``[B, *D]``; ``t`` is ``[B]``; every tensor in a
:class:`PathSample` has the shape of ``x0`` except ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .config import BRIDGE_EPS, TIME_SAMPLERS
from .errors import ConfigError


@dataclass(frozen=True)
class PathSample:
    """One minibatch of points on conditional paths.

    Attributes:
        x0: noise end, ``[B, *D]``.
        x1: data end, ``[B, *D]``.
        t: times, ``[B]``.
        x_t: the point on the path at ``t``, ``[B, *D]``.
        target: what the network regresses at ``(t, x_t)``: the velocity
            ``u_t`` (sigma = 0) or the SDE drift ``b_t`` (sigma > 0), ``[B, *D]``.
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    target: Tensor


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like``."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class ProbabilityPath(Protocol):
    """A conditional probability path (one small class per path)."""

    sigma: float

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None) -> PathSample:
        ...


class LinearPath:
    """Straight line from noise to data (sigma = 0); target ``x1 - x0``."""

    sigma = 0.0

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Return ``x_t = (1 - t) x0 + t x1`` and ``u = x1 - x0``.

        Args:
            x0: ``[B, *D]`` noise.  x1: ``[B, *D]`` data.  t: ``[B]`` in [0, 1].
            generator: unused (the path is deterministic given its ends).
        """
        _check_ends(x0, x1, t)
        tt = _expand_time(t, x0)
        x_t = (1 - tt) * x0 + tt * x1
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, target=x1 - x0)

    def to_config(self) -> dict:
        return {"kind": "linear"}


class BrownianBridgePath:
    """Brownian bridge from noise to data with diffusion ``sigma`` (> 0).

    Mean ``(1 - t) x0 + t x1``, variance ``sigma^2 t (1 - t)`` per coordinate;
    target: the SDE drift ``(x1 - x_t) / (1 - t)``.
    """

    def __init__(self, sigma: float, *, eps: float = BRIDGE_EPS) -> None:
        if not sigma > 0:
            raise ConfigError(f"Brownian bridge needs sigma > 0, got {sigma}; use the linear path for sigma = 0")
        if not 0 < eps < 1:
            raise ConfigError(f"bridge eps must be in (0, 1), got {eps}")
        self.sigma = float(sigma)
        self.eps = float(eps)

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Draw ``x_t`` on the bridge and its drift target; t is clipped to ``<= 1 - eps``."""
        _check_ends(x0, x1, t)
        t = t.clamp(max=1.0 - self.eps)
        tt = _expand_time(t, x0)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x_t = (1 - tt) * x0 + tt * x1 + self.sigma * torch.sqrt(tt * (1 - tt)) * z
        drift = (x1 - x_t) / (1 - tt)
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, target=drift)

    def to_config(self) -> dict:
        return {"kind": "bridge", "sigma": self.sigma, "eps": self.eps}


def _check_ends(x0: Tensor, x1: Tensor, t: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape [B] = [{x0.shape[0]}], got {tuple(t.shape)}")


def build_path(sigma: float = 0.0, *, eps: float = BRIDGE_EPS) -> ProbabilityPath:
    """The linear path for ``sigma == 0``, a Brownian bridge otherwise."""
    if sigma < 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    return LinearPath() if sigma == 0 else BrownianBridgePath(sigma, eps=eps)


class TimeSampler:
    """Training-time distribution on (0, 1).

    * ``uniform``: ``t ~ U(0, 1)``.
    * ``logit-normal``: ``t = sigmoid(m + s n)``, ``n ~ N(0, 1)`` (SD3's choice;
      puts more weight on the middle of the path).
    """

    KINDS = TIME_SAMPLERS

    def __init__(self, kind: str = "uniform", *, mean: float = 0.0, std: float = 1.0) -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"unknown time sampler {kind!r}; choose one of {', '.join(self.KINDS)}")
        if kind == "logit-normal" and not std > 0:
            raise ConfigError(f"logit-normal std must be > 0, got {std}")
        self.kind, self.mean, self.std = kind, float(mean), float(std)

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``[n]`` times in (0, 1)."""
        if self.kind == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=device))

    def density(self, t: Tensor) -> Tensor:
        """The density of the sampler at ``t`` (used by tests)."""
        if self.kind == "uniform":
            return torch.ones_like(t)
        logit = torch.log(t) - torch.log1p(-t)
        gauss = torch.exp(-0.5 * ((logit - self.mean) / self.std) ** 2) / (self.std * math.sqrt(2 * math.pi))
        return gauss / (t * (1 - t))

    def to_config(self) -> dict:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}
