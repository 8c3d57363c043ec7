"""Flow-GRPO's SDE sampler: the ODE's marginals with noise injected, and per-step Gaussian log-probabilities.

Our convention (see :mod:`flowsteer.paths`): ``x_t = (1 - t) x0 + t x1`` with noise ``x0 ~ N(0, I)`` at
t = 0 and data at t = 1; the network learns ``v(t, x) = E[x1 - x0 | x_t = x]``.  On this path
``E[x0 | x_t = x] = x - t v``, so the score is ``grad log p_t(x) = -(x - t v) / (1 - t)``, and for any
diffusion ``g(t)`` the SDE (Song et al. 2021, reverse-time view)::

    dx = [v + g^2/2 grad log p_t] dt + g dW = [v (1 + g^2 t / (2 (1 - t))) - g^2 x / (2 (1 - t))] dt + g dW

has the ODE's marginals.  Flow-GRPO's noise shape (Liu et al. 2025, their noise level ``s = 1 - t``) is
``g(t) = a sqrt((1 - t) / t)`` with ``a`` = ``--sde-noise``: largest at the noise end, zero at the data.
Then ``g^2 / (2 (1 - t)) = a^2 / (2 t)``; at t = 0 the ``t`` of that denominator is the next grid time
(Flow-GRPO's ``sigma_max = sigmas[1]``).  Euler-Maruyama on the uniform grid ``t_k = k h``::

    c_k    = a^2 / (2 max(t_k, t_1))
    mean_k = x_k + h [v_k (1 + c_k t_k) - c_k x_k]
    std_k  = a sqrt((1 - t_k) / max(t_k, t_1)) sqrt(h)
    x_k+1  = mean_k + std_k xi,   xi ~ N(0, I)

With ``a = 0`` this is the Euler sampler, bit for bit.  A transition's log-probability is the Gaussian
``N(x_k+1; mean_k, std_k^2 I)`` averaged over a sample's coordinates (as Flow-GRPO does, so one number means
the same for any sample size); the KL between two such steps with one ``std_k`` is
``mean_coords (mean_p - mean_q)^2 / (2 std_k^2)`` (Flow-GRPO divides by ``g^2``, not by ``g^2 h``: its beta
is ours times ``h``).

Flow-GRPO-Fast's window: only ``window`` consecutive steps starting at ``start`` add noise (the others are
Euler steps); the log-probabilities that matter are that window's.  ``start`` is a device tensor, so
drawing it takes no host synchronisation.  Every coefficient is a float32 device tensor; the state is
float32 whatever the network's autocast dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .errors import ConfigError

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class SDEGrid:
    """The uniform grid of a K-step SDE sampler and its per-step coefficients (float32, ``[K]`` or ``[K+1]``).

    Attributes:
        times: ``[K + 1]`` grid times ``t_k``.  h: ``[K]`` step sizes.
        c: ``[K]`` the drift's ``g^2 / (2 (1 - t))``.  std: ``[K]`` each step's noise std ``g sqrt(h)``.
    """

    times: Tensor
    h: Tensor
    c: Tensor
    std: Tensor


def sde_grid(steps: int, noise: float, *, device: torch.device | str = "cpu") -> SDEGrid:
    """Coefficients of :func:`sde_sample` on ``steps`` uniform steps with noise level ``noise`` (= ``a``)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"the number of SDE steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"--sde-noise must be a finite number >= 0, got {noise!r}")
    t64 = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device="cpu")  # the Euler grid, to the bit; on the host
    h64 = t64[1:] - t64[:-1]
    t_den = t64[:-1].clamp_min(float(t64[1]))
    c64 = noise**2 / (2 * t_den)
    std64 = noise * torch.sqrt((1 - t64[:-1]) / t_den) * torch.sqrt(h64)
    f32 = {"dtype": torch.float32, "device": device}
    return SDEGrid(times=t64.to(**f32), h=h64.to(**f32), c=c64.to(**f32), std=std64.to(**f32))


def sde_step_mean(x: Tensor, v: Tensor, t: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """The mean of one SDE step: ``x + h (v (1 + c t) - c x)``; ``x``, ``v`` ``[B, *D]``, ``t, h, c`` 0-d."""
    return x + h * (v * (1 + c * t) - c * x)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log N(x; mean, std^2 I)`` averaged over each sample's coordinates: ``[B]`` from ``[B, *D]``, 0-d std."""
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1)


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """``KL(N(mean_p, std^2 I) || N(mean_q, std^2 I))`` averaged over coordinates: ``[B]``."""
    return ((mean_p - mean_q) ** 2 / (2 * std**2)).flatten(1).mean(1)


@dataclass(frozen=True)
class SDETrajectory:
    """One batch of SDE trajectories.

    Attributes:
        states: ``[K + 1, B, *D]`` (``states[-1]`` is the sample).  log_probs: ``[K, B]`` each transition's
        log-probability under the sampling network (only the noisy steps' are meaningful).
        grid: the coefficients used.  noisy: ``[K]`` bool, the steps that added noise.  nfe: model calls.
    """

    states: Tensor
    log_probs: Tensor
    grid: SDEGrid
    noisy: Tensor
    nfe: int

    @property
    def x(self) -> Tensor:
        return self.states[-1]


def call_velocity(model: Callable[..., Tensor], t: Tensor, x: Tensor, cond: Mapping[str, Any]) -> Tensor:
    """``model(t, x, **cond)`` with the 0-d time ``t`` expanded to ``[B]``; the output in float32."""
    return model(t.expand(x.shape[0]), x, **cond).float()


@torch.no_grad()
def sde_sample(model: Callable[..., Tensor], x0: Tensor, *, steps: int, noise: float,
               cond: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
               window: int = 0, start: Tensor | int = 0, grid: SDEGrid | None = None) -> SDETrajectory:
    """Integrate from noise ``x0`` ``[B, *D]`` to t = 1 with the SDE above, keeping every state.

    Args:
        noise: ``a`` (0 = the Euler sampler).  window: the number of noisy steps (0 = every step), from
            step ``start`` (an int or a 0-d device tensor; steps outside the window are Euler steps).
        generator: draws the Brownian increments (on the generator's device, then moved to ``x0``'s).
    """
    cond = dict(cond or {})
    grid = grid or sde_grid(steps, noise, device=x0.device)
    k_idx = torch.arange(steps, device=x0.device)
    noisy = torch.ones(steps, dtype=torch.bool, device=x0.device) if window <= 0 else \
        (k_idx >= start) & (k_idx < start + window)
    std = torch.where(noisy, grid.std, torch.zeros_like(grid.std))
    c = torch.where(noisy, grid.c, torch.zeros_like(grid.c))
    x = x0.float()
    states, log_probs = [x], []
    where = generator.device if generator is not None else x.device
    for k in range(steps):
        v = call_velocity(model, grid.times[k], x, cond)
        mean = sde_step_mean(x, v, grid.times[k], grid.h[k], c[k])
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
        x = mean + std[k] * xi
        log_probs.append(gaussian_log_prob(x, mean, grid.std[k]))
        states.append(x)
    return SDETrajectory(states=torch.stack(states), log_probs=torch.stack(log_probs), grid=grid, noisy=noisy,
                         nfe=steps)
