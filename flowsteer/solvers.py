"""Samplers: integrate ``dx/dt = v(t, x)`` (ODE) or ``dX = b dt + sigma dW`` (SDE).

All samplers run under :func:`torch.inference_mode`, report the number of
function evaluations (NFE) they spent, and can return the whole trajectory.

Fixed-step ODE methods on the uniform grid ``t_k = t0 + k h``:

* ``euler``     ``x += h v(t, x)``                                  (1 NFE/step, order 1)
* ``midpoint``  ``x += h v(t + h/2, x + h/2 v(t, x))``              (2 NFE/step, order 2)
* ``heun``      ``k1 = v(t, x); k2 = v(t + h, x + h k1); x += h (k1 + k2)/2``  (2 NFE/step, order 2)

SDE: ``euler-maruyama`` ``x += h b(t, x) + sigma sqrt(h) xi``; **our choice**: the
last step adds no noise, because the Brownian bridge the drift was trained on
is pinned at t = 1 (with sigma -> 0 it equals ``euler`` exactly).

The bridge drift ``b = (E[x1 | x_t] - x_t) / (1 - t)`` grows like ``1 / (1 - t)``, so a
network is trained only at ``t <= 1 - eps`` (:class:`~flowsteer.paths.BrownianBridgePath`).
**Our choice** for sampling past that time (``t > 1 - eps``, only reached with more than
``1 / eps`` steps): at the first such grid time the network is asked once, at ``t_c = 1 - eps``,
for its prediction of the end point ``x1_hat = x + (1 - t_c) b(t_c, x)``, and the sampler then
follows the Brownian bridge to that point (drift ``(x1_hat - x) / (1 - t)``, still with noise
except on the last step, so it ends exactly on ``x1_hat``).  This is the exact drift for a
point-mass target; in general it replaces the last ``eps`` of the path by its posterior mean (the end
law is short of the target's variance by that posterior variance, about ``sigma^2 eps`` per coordinate:
2 % of the std of a N(m, 0.5^2) target at sigma = 1), and the network is never evaluated at a time it
was not trained on.  (Re-asking the network at
``t_c`` on every step instead is unstable: ``x1_hat`` is not a fixed point of the map, and the
``1 / (1 - t)`` factor amplifies the mismatch as the steps shrink.)

Adaptive: ``dopri5`` through :func:`torchdiffeq.odeint` (rtol/atol).

Shapes: ``x0`` is ``[B, *D]``; the model is called as ``model(t, x, **cond)``
with ``t`` of shape ``[B]``.
"""

from __future__ import annotations

from .config import BRIDGE_EPS, SOLVERS  # noqa: F401 (re-exported)

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .errors import ConfigError



@dataclass(frozen=True)
class SampleResult:
    """Result of one integration.

    Attributes:
        x: ``[B, *D]`` state at the final time.
        nfe: number of model evaluations spent.
        times: ``[K + 1]`` times of the returned trajectory (None unless asked).
        trajectory: ``[K + 1, B, *D]`` states at ``times`` (None unless asked).
    """

    x: Tensor
    nfe: int
    times: Tensor | None = None
    trajectory: Tensor | None = None


class _CountingField:
    """Calls ``model(t, x, **cond)`` with ``t`` broadcast to ``[B]``; counts calls."""

    def __init__(self, model: Callable[..., Tensor], cond: Mapping[str, Any] | None) -> None:
        self.model = model
        self.cond = dict(cond or {})
        self.nfe = 0

    def __call__(self, t: Tensor | float, x: Tensor) -> Tensor:
        self.nfe += 1
        if isinstance(t, Tensor):
            t_batch = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
        else:  # a host float: a fill kernel, no host-to-device copy
            t_batch = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        return self.model(t_batch, x, **self.cond)


def _check(steps: int, t0: float, t1: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"the number of solver steps must be an integer >= 1, got {steps!r}")
    if not t1 > t0:
        raise ConfigError(f"integration needs t1 > t0, got t0={t0}, t1={t1}")


def _time_grid(t0: float, t1: float, steps: int) -> Tensor:
    """The ``steps + 1`` grid times of the fixed-step solvers, as host float64 (read in the Python loop)."""
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64, device="cpu")


@torch.inference_mode()
def _fixed_step(
    field: _CountingField,
    x: Tensor,
    *,
    method: str,
    steps: int,
    t0: float,
    t1: float,
    sigma: float,
    return_trajectory: bool,
    generator: torch.Generator | None,
    bridge_eps: float | None = None,
) -> SampleResult:
    times = _time_grid(t0, t1, steps)
    traj = [x] if return_trajectory else None
    x1_hat = None  # euler-maruyama past t = 1 - bridge_eps: the network's end point, asked once
    for k in range(steps):
        t, t_next = float(times[k]), float(times[k + 1])
        h = t_next - t
        if method == "euler":
            x = x + h * field(t, x)
        elif method == "midpoint":
            x_half = x + (h / 2) * field(t, x)
            x = x + h * field(t + h / 2, x_half)
        elif method == "heun":
            k1 = field(t, x)
            k2 = field(t_next, x + h * k1)
            x = x + (h / 2) * (k1 + k2)
        elif method == "euler-maruyama":
            if bridge_eps is not None and t > 1 - bridge_eps:  # past the trained times (module doc)
                if x1_hat is None:
                    x1_hat = x + bridge_eps * field(1 - bridge_eps, x)
                x = x + (h / (1 - t)) * (x1_hat - x)
            else:
                x = x + h * field(t, x)
            if sigma > 0 and k < steps - 1:
                # drawn where the generator lives (a run's device generator, or a CPU one for device-independent
                # sampling), then placed with x
                where = generator.device if generator is not None else x.device
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
                x = x + sigma * (h**0.5) * noise
        else:  # pragma: no cover - guarded by integrate()
            raise AssertionError(method)
        if traj is not None:
            traj.append(x)
    return SampleResult(
        x=x,
        nfe=field.nfe,
        times=times.to(x.dtype) if return_trajectory else None,
        trajectory=torch.stack(traj) if traj is not None else None,
    )


@torch.inference_mode()
def _dopri5(
    field: _CountingField,
    x: Tensor,
    *,
    t0: float,
    t1: float,
    rtol: float,
    atol: float,
    return_trajectory: bool,
    trajectory_points: int,
) -> SampleResult:
    from torchdiffeq import odeint

    n = trajectory_points if return_trajectory else 2
    times = torch.linspace(t0, t1, n, dtype=x.dtype, device=x.device)
    states = odeint(field, x, times, method="dopri5", rtol=rtol, atol=atol)
    return SampleResult(
        x=states[-1],
        nfe=field.nfe,
        times=times if return_trajectory else None,
        trajectory=states if return_trajectory else None,
    )


def integrate(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    solver: str = "euler",
    steps: int = 100,
    sigma: float = 0.0,
    t0: float = 0.0,
    t1: float = 1.0,
    cond: Mapping[str, Any] | None = None,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    bridge_eps: float | None = BRIDGE_EPS,
) -> SampleResult:
    """Integrate a velocity (or drift) model from ``t0`` to ``t1``.

    Args:
        model: ``v = model(t, x, **cond)``, ``t`` of shape ``[B]``.
        x0: ``[B, *D]`` initial state (noise).
        solver: one of ``euler``, ``heun``, ``midpoint``, ``euler-maruyama``, ``dopri5``.
        steps: fixed-step solvers: number of steps; ``dopri5``: number of
            trajectory intervals returned when ``return_trajectory`` (the
            adaptive solver picks its own steps).
        sigma: diffusion of ``euler-maruyama`` (ignored by the ODE solvers).
        cond: keyword conditions passed to the model (e.g. ``{"y": labels}``).
        return_trajectory: also return the states at every grid time.
        generator: RNG for the Brownian increments of ``euler-maruyama``.
        rtol, atol: tolerances of ``dopri5``.
        bridge_eps: ``euler-maruyama`` with ``sigma > 0`` treats the model as a Brownian-bridge drift
            trained at ``t <= 1 - bridge_eps`` and, past that time, follows the bridge to the end point
            the model predicts there (module doc; one NFE for those steps); None turns this off (a
            general SDE drift, asked at every grid time).

    Returns:
        :class:`SampleResult` with the final state and the NFE spent.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    _check(steps, t0, t1)
    if sigma < 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    if bridge_eps is not None and not 0 < bridge_eps < 1:
        raise ConfigError(f"bridge_eps must be in (0, 1), got {bridge_eps}")
    field = _CountingField(model, cond)
    if solver == "dopri5":
        return _dopri5(
            field, x0, t0=t0, t1=t1, rtol=rtol, atol=atol,
            return_trajectory=return_trajectory, trajectory_points=steps + 1,
        )
    return _fixed_step(
        field, x0, method=solver, steps=steps, t0=t0, t1=t1, sigma=sigma,
        return_trajectory=return_trajectory, generator=generator,
        bridge_eps=bridge_eps if solver == "euler-maruyama" and sigma > 0 else None,
    )


def nfe_of(solver: str, steps: int, *, sigma: float = 0.0, t0: float = 0.0, t1: float = 1.0,
           bridge_eps: float | None = BRIDGE_EPS) -> int:
    """NFE :func:`integrate` spends with these arguments; -1 for the adaptive ``dopri5``.

    Fixed-step solvers call the model once (``euler``, ``euler-maruyama``) or twice (``heun``, ``midpoint``) per
    step, except ``euler-maruyama`` with ``sigma > 0`` and ``bridge_eps``: its steps that start past
    ``t = 1 - bridge_eps`` follow the bridge to one end point, asked once for all of them.
    """
    per_step = {"euler": 1, "euler-maruyama": 1, "heun": 2, "midpoint": 2}
    if solver not in per_step:
        return -1
    if solver != "euler-maruyama" or sigma <= 0 or bridge_eps is None:
        return per_step[solver] * steps
    starts = _time_grid(t0, t1, steps)[:-1]
    past = int((starts > 1 - bridge_eps).sum())
    return steps - past + (1 if past else 0)
