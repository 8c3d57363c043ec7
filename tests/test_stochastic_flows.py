"""Stochastic flows (sigma > 0): the bridge drift against closed forms, sigma -> 0 against the ODE, the drift
clipping near t = 1, GFT's blend on bridges, and the memorisation figure against brute force.

Closed form used throughout (1-D, independent coupling, noise N(0, 1), target N(m, s^2), Brownian bridge
with diffusion sigma): x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z has variance
V(t) = (1 - t)^2 + t^2 s^2 + sigma^2 t (1 - t) and Cov(x1, x_t) = t s^2, so
E[x1 | x_t = x] = m + t s^2 (x - t m) / V and the marginal drift is b(t, x) = (E[x1 | x] - x) / (1 - t).
The SDE dX = b dt + sigma dW from N(0, 1) has the bridge mixture's marginals (Markovian projection),
so its law at t = 1 is N(m, s^2) for every sigma; at sigma = 0 b is the ODE velocity.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import cli
from test_gft import fit_at_tau_one
from flowsteer.config import BRIDGE_EPS
from flowsteer.metrics import memorised_share
from flowsteer.paths import BrownianBridgePath, LinearPath
from flowsteer.runs import load_run
from flowsteer.solvers import integrate

M, S = 2.0, 0.5


def bridge_drift(t, x, m=M, s=S, sigma=0.0):
    """The marginal drift of the Brownian-bridge mixture in closed form (module doc); ``t`` float or ``[B, 1]``."""
    var = (1 - t) ** 2 + (t * s) ** 2 + sigma**2 * t * (1 - t)
    x1_hat = m + t * s**2 * (x - t * m) / var
    return (x1_hat - x) / (1 - t)


class Drift(nn.Module):
    def __init__(self, m=M, s=S, sigma=0.0):
        super().__init__()
        self.m, self.s, self.sigma = m, s, sigma

    def forward(self, t, x, **_):
        return bridge_drift(t.reshape(-1, 1).to(x.dtype), x, self.m, self.s, self.sigma)


def test_zero_sigma_drift_is_the_linear_path_velocity():
    """At sigma = 0 the bridge drift is E[x1 - x0 | x_t], the ODE velocity of the linear path."""
    t, x = 0.37, torch.linspace(-3, 3, 11, dtype=torch.float64)
    var = (1 - t) ** 2 + (t * S) ** 2
    velocity = M + (t * S**2 - (1 - t)) / var * (x - t * M)
    torch.testing.assert_close(bridge_drift(t, x), velocity)


def test_bridge_target_tends_to_the_linear_target_as_sigma_vanishes():
    """The training pairs of a bridge with sigma = 1e-7 equal the linear path's to float64 round-off."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * (1 - BRIDGE_EPS)
    bridge = BrownianBridgePath(1e-7).sample(x0, x1, t, generator=g)
    line = LinearPath().sample(x0, x1, t)
    torch.testing.assert_close(bridge.x_t, line.x_t, atol=1e-6, rtol=0)
    torch.testing.assert_close(bridge.target, line.target, atol=1e-5, rtol=0)


def test_sigma_to_zero_euler_maruyama_agrees_with_the_ode():
    """Same noise, exact drifts, 100 steps: the SDE sample's distance to the ODE sample shrinks like sigma.

    Tolerances: at sigma = 1e-4 the largest gap is below 1e-3; dividing sigma by 10 divides the mean gap by
    at least 5 (it is linear in sigma, up to the drift's own O(sigma^2) change).
    """
    x0 = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ode = integrate(Drift(), x0, solver="euler", steps=100).x
    gaps = {}
    for sigma in (1e-2, 1e-3, 1e-4):
        sde = integrate(Drift(sigma=sigma), x0, solver="euler-maruyama", steps=100, sigma=sigma,
                        generator=torch.Generator().manual_seed(2)).x
        gaps[sigma] = (sde - ode).abs()
    assert gaps[1e-4].max().item() < 1e-3
    assert gaps[1e-3].mean().item() < gaps[1e-2].mean().item() / 5
    assert gaps[1e-4].mean().item() < gaps[1e-3].mean().item() / 5


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_euler_maruyama_of_the_bridge_drift_reaches_the_target_law(sigma):
    """100,000 paths, 500 and 2000 steps.  Up to the first grid time t' past 1 - eps the sampler follows the exact
    drift, so x_t' ~ N(t' m, V(t')); from there it ends exactly on the end point predicted at 1 - eps,
    x1_hat = m + c (x - (1 - eps) m) with c = (1 - eps) s^2 / V(1 - eps).  So the law at t = 1 is
    N(m + c (t' - (1 - eps)) m, c^2 V(t')): the target's N(m, s^2) less the posterior variance of the last eps
    (about 2 % of the std at sigma = 1), in closed form.  Tolerances: 0.005 on the mean, 0.7 % on the std
    (sampling error about 0.2 %, Euler-Maruyama's own error about 0.3 % at 500 steps).  Re-asking the drift at
    1 - eps on every late step instead moves the mean by 0.03 at 500 steps and 0.05 at 2000 (measured)."""
    x0 = torch.randn(100_000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tc = 1 - BRIDGE_EPS

    def var(t):
        return (1 - t) ** 2 + (t * S) ** 2 + sigma**2 * t * (1 - t)

    for steps in (500, 2000):
        x = integrate(Drift(sigma=sigma), x0, solver="euler-maruyama", steps=steps, sigma=sigma,
                      generator=torch.Generator().manual_seed(4)).x
        t_first = (math.floor(tc * steps + 1e-9) + 1) / steps  # the first grid time past 1 - eps
        c = tc * S**2 / var(tc)
        assert x.mean().item() == pytest.approx(M + c * (t_first - tc) * M, abs=0.005), steps
        assert x.std().item() == pytest.approx(c * math.sqrt(var(t_first)), rel=0.007), steps
        assert x.std().item() < S  # the last eps of noise is replaced by its posterior mean


def test_sampler_never_asks_the_network_past_the_trained_times():
    """Point-mass target c: the exact drift (c - x) / (1 - t) for every sigma.  With 1000 steps (10 past
    t = 1 - eps) the network is asked only at t <= 1 - eps (once there), and every path lands on c exactly,
    as the exact drift's paths do."""
    c, seen = 1.5, []

    def point_mass(t, x, **_):
        seen.append(float(t.max()))
        return (c - x) / (1 - t.reshape(-1, 1).to(x.dtype))

    x0 = torch.randn(500, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = integrate(point_mass, x0, solver="euler-maruyama", steps=1000, sigma=0.5,
                  generator=torch.Generator().manual_seed(6)).x
    assert max(seen) <= 1 - BRIDGE_EPS + 1e-12 and len(seen) == 992  # 991 grid times up to 1 - eps, then one
    torch.testing.assert_close(x, torch.full_like(x, c), atol=1e-9, rtol=0)
    # a general SDE (bridge_eps=None) is asked at its own times
    seen.clear()
    integrate(point_mass, x0, solver="euler-maruyama", steps=1000, sigma=0.5, bridge_eps=None,
              generator=torch.Generator().manual_seed(6))
    assert max(seen) > 1 - BRIDGE_EPS


def test_bridge_training_target_at_the_clip_has_the_closed_form_variance():
    """Times past 1 - eps are clipped to it; there the drift target (x1 - x_t) / (1 - t) has mean x1 - x0 and
    variance sigma^2 t / (1 - t) (= 99 sigma^2 at eps = 0.01): finite, 200,000 draws, tolerance 2 %."""
    sigma, n = 0.4, 200_000
    x0, x1 = torch.zeros(n, 1), torch.ones(n, 1)
    t = torch.where(torch.arange(n) % 2 == 0, 0.995, 1.0)
    s = BrownianBridgePath(sigma).sample(x0, x1, t, generator=torch.Generator().manual_seed(7))
    tc = 1 - BRIDGE_EPS
    assert torch.all(s.t == torch.tensor(tc))
    assert s.target.mean().item() == pytest.approx(1.0, abs=0.05)
    assert s.target.var().item() == pytest.approx(sigma**2 * tc / (1 - tc), rel=0.02)


def test_gft_on_bridges_learns_the_blend_of_drifts():
    """At tau = 1 on a bridge with sigma = 0.5 the network converges to (b_q + b_pre) / 2, both bridge drifts
    of the same sigma (pre: N(0, 1) -> N(0, 1); target N(3, 0.5^2)).  Tolerance 0.15 on +-2 sd of the
    target's x_t at t <= 0.7 (the bridge's targets are noisier than the line's, variance sigma^2 t / (1 - t))."""
    sigma = 0.5
    model = fit_at_tau_one(Drift(m=0.0, s=1.0, sigma=sigma), sigma=sigma, steps=3000, batch_size=1024)
    errs = []
    with torch.no_grad():
        for t in (0.1, 0.3, 0.5, 0.7):
            sd = math.sqrt((1 - t) ** 2 + (0.5 * t) ** 2 + sigma**2 * t * (1 - t))
            x = torch.linspace(3 * t - 2 * sd, 3 * t + 2 * sd, 21).reshape(-1, 1)
            blend = 0.5 * bridge_drift(t, x, 3.0, 0.5, sigma) + 0.5 * bridge_drift(t, x, 0.0, 1.0, sigma)
            errs.append((model(torch.full((21,), t), x) - blend).abs().max().item())
    assert max(errs) < 0.15, errs


def test_memorised_share_against_brute_force():
    g = np.random.default_rng(0)
    targets, samples = g.normal(size=(64, 5)), g.normal(size=(300, 5))
    d_tt = np.linalg.norm(targets[:, None] - targets[None], axis=-1) + np.diag(np.full(64, np.inf))
    nn_dist = np.sort(d_tt.min(axis=1))
    threshold = nn_dist[31]  # the lower middle of 64 values, torch's median
    expect = np.mean(np.linalg.norm(samples[:, None] - targets[None], axis=-1).min(axis=1) < threshold)
    assert memorised_share(torch.from_numpy(samples), torch.from_numpy(targets)) == pytest.approx(expect, abs=1e-12)
    # copies of the targets (plus tiny noise) are all memorised; far-away samples none
    copies = np.repeat(targets, 3, axis=0) + 1e-6 * g.normal(size=(192, 5))
    assert memorised_share(copies, targets) == 1.0
    assert memorised_share(samples + 100.0, targets) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        memorised_share(samples, targets[:1])


def test_adapt_a_stochastic_base_end_to_end(tmp_path):
    """A base pretrained with --sigma is adapted on bridges of that sigma and evaluated with Euler-Maruyama,
    with the memorisation figure for a small target set; the OT coupling is the default."""
    base, out = tmp_path / "base", tmp_path / "adapted"
    assert cli("pretrain", "--data", "8gaussians", "--sigma", "0.3", "--steps", "30", "--width", "32",
               "--batch-size", "64", "--out", str(base), "--quiet").returncode == 0
    res = cli("adapt", "--base", str(base), "--target", "moons", "--n-target", "32", "--steps", "20",
              "--batch-size", "32", "--eval-every", "10", "--eval-samples", "64", "--eval-nfes", "2,8",
              "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    run = load_run(out)
    assert run.config["path"] == {"kind": "bridge", "sigma": 0.3, "eps": BRIDGE_EPS}
    assert run.config["settings"]["coupling"] == "ot"
    final = run.config["final"]
    assert 0.0 <= final["memorised_share_nfe8"] <= 1.0 and "path_length" not in final
    assert "memorised_share_nfe2" not in final  # diversity figures only at the largest NFE
