"""Samplers against closed-form flows."""

import math

import pytest
import torch

from flowsteer.errors import ConfigError
from flowsteer.solvers import SOLVERS, integrate, nfe_of


def field(t, x):
    """dx/dt = 2 t x  =>  x(1) = x(0) e^{1}; time-dependent, so order matters."""
    return 2 * t.reshape(-1, 1) * x


X0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
EXACT = X0 * math.e


@pytest.mark.parametrize("solver,steps,tol", [("euler", 200, 2e-2), ("heun", 50, 1e-3), ("midpoint", 50, 1e-3),
                                              ("dopri5", 10, 1e-4)])
def test_ode_solvers_integrate_a_known_field(solver, steps, tol):
    res = integrate(field, X0, solver=solver, steps=steps)
    assert torch.allclose(res.x, EXACT, rtol=tol, atol=tol)
    if solver != "dopri5":
        assert res.nfe == nfe_of(solver, steps)
    else:
        assert res.nfe > 0


@pytest.mark.parametrize("steps", [10, 20, 40])
def test_heun_error_is_10x_smaller_than_euler(steps):
    err = {s: (integrate(field, X0, solver=s, steps=steps).x - EXACT).abs().max().item() for s in ("euler", "heun")}
    assert err["heun"] * 10 <= err["euler"]


def test_convergence_orders():
    """Halving h divides Euler's error by ~2 and Heun's by ~4."""
    def err(s, n):
        return (integrate(field, X0, solver=s, steps=n).x - EXACT).abs().max().item()
    assert err("euler", 40) / err("euler", 80) == pytest.approx(2.0, rel=0.1)
    assert err("heun", 40) / err("heun", 80) == pytest.approx(4.0, rel=0.1)


def test_trajectory_and_inference_mode():
    res = integrate(field, X0, solver="heun", steps=32, return_trajectory=True)
    assert res.trajectory.shape == (33, 2, 2)
    assert res.times.shape == (33,)
    torch.testing.assert_close(res.trajectory[0], X0)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    # each state matches the closed form x0 exp(t^2) on the grid (Heun, h = 1/32: error < 1e-3)
    for k, t in enumerate(res.times.tolist()):
        assert torch.allclose(res.trajectory[k], X0 * math.exp(t * t), rtol=1e-3)
    assert res.x.is_inference()
    dres = integrate(field, X0, solver="dopri5", steps=4, return_trajectory=True)
    assert dres.trajectory.shape == (5, 2, 2)
    assert torch.allclose(dres.trajectory[2], X0 * math.exp(0.25), rtol=1e-4)


def test_euler_maruyama_with_vanishing_sigma_matches_euler():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(100, 2, generator=g, dtype=torch.float64)
    euler = integrate(field, x0, solver="euler", steps=30).x
    em0 = integrate(field, x0, solver="euler-maruyama", steps=30, sigma=0.0).x
    assert torch.equal(em0, euler)
    em_small = integrate(field, x0, solver="euler-maruyama", steps=30, sigma=1e-8,
                         generator=torch.Generator().manual_seed(1)).x
    assert torch.allclose(em_small, euler, atol=1e-6)


def test_euler_maruyama_reproduces_ornstein_uhlenbeck_variance():
    """dX = -X dt + sigma dW from 0 (last step noise-free): Var X(1) matches the discrete recursion."""
    n, steps, sigma = 100_000, 100, 0.8
    x = integrate(lambda t, x: -x, torch.zeros(n, 1), solver="euler-maruyama", steps=steps, sigma=sigma,
                  generator=torch.Generator().manual_seed(2)).x
    h = 1.0 / steps
    var = 0.0
    for k in range(steps):
        var = (1 - h) ** 2 * var + (sigma**2 * h if k < steps - 1 else 0.0)
    assert x.var().item() == pytest.approx(var, rel=0.02)
    # and the continuous OU variance sigma^2 (1 - e^-2)/2 within discretisation error
    assert x.var().item() == pytest.approx(sigma**2 * (1 - math.exp(-2)) / 2, rel=0.05)


def test_solver_validation():
    with pytest.raises(ConfigError, match="unknown solver"):
        integrate(field, X0, solver="rk4")
    with pytest.raises(ConfigError, match="steps"):
        integrate(field, X0, solver="euler", steps=0)
    assert set(SOLVERS) == {"euler", "heun", "midpoint", "euler-maruyama", "dopri5"}


def test_model_receives_batch_times_and_conditions():
    seen = {}

    def model(t, x, y=None):
        seen["t"], seen["y"] = t, y
        return torch.zeros_like(x)

    integrate(model, torch.zeros(4, 3), solver="euler", steps=1, cond={"y": torch.arange(4)})
    assert seen["t"].shape == (4,)
    assert torch.equal(seen["y"], torch.arange(4))


@pytest.mark.parametrize("steps,t0", [(10, 0.0), (100, 0.0), (250, 0.0), (1000, 0.0), (1000, 0.3), (7, 0.9999)])
@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_nfe_of_counts_what_euler_maruyama_spends(steps, t0, sigma):
    """The count of nfe_of against the calls integrate makes: above 100 steps, with sigma > 0, the steps past
    t = 1 - bridge_eps cost one call between them (1000 steps cost 992)."""
    x = torch.zeros(3, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    res = integrate(lambda t, z: -z, x, solver="euler-maruyama", steps=steps, sigma=sigma, t0=t0, generator=gen)
    assert res.nfe == nfe_of("euler-maruyama", steps, sigma=sigma, t0=t0)
    if sigma > 0 and steps == 1000 and t0 == 0.0:
        assert res.nfe == 992  # the count the review measured by hand
