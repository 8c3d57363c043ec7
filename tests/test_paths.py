"""Paths against their closed forms."""

import math

import pytest
import torch

from flowsteer.errors import ConfigError
from flowsteer.paths import BrownianBridgePath, LinearPath, TimeSampler, build_path


def test_linear_path_interpolates_and_targets_difference():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    s = LinearPath().sample(x0, x1, t)
    torch.testing.assert_close(s.x_t[0], x0[0])
    torch.testing.assert_close(s.x_t[-1], x1[-1])
    torch.testing.assert_close(s.x_t[2], 0.5 * (x0[2] + x1[2]))
    torch.testing.assert_close(s.target, x1 - x0)
    # d x_t / dt along the path equals the target (finite difference)
    h = 1e-3
    s2 = LinearPath().sample(x0, x1, t.clamp(max=1 - h) + h)
    s1 = LinearPath().sample(x0, x1, t.clamp(max=1 - h))
    torch.testing.assert_close((s2.x_t - s1.x_t) / h, s.target, atol=1e-3, rtol=1e-3)


def test_linear_path_broadcasts_time_over_images():
    x0, x1 = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    s = LinearPath().sample(x0, x1, torch.tensor([0.2, 0.9]))
    assert torch.allclose(s.x_t[0], torch.full((1, 4, 4), 0.2))
    assert torch.allclose(s.x_t[1], torch.full((1, 4, 4), 0.9))


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.8])
def test_bridge_mean_and_variance(t):
    """x_t has mean (1-t) x0 + t x1 and variance sigma^2 t (1-t); 200k draws, tol 2 %."""
    sigma, n = 0.7, 200_000
    x0, x1 = torch.full((n, 1), -1.0), torch.full((n, 1), 2.0)
    s = BrownianBridgePath(sigma).sample(x0, x1, torch.full((n,), t), generator=torch.Generator().manual_seed(1))
    mean, var = s.x_t.mean().item(), s.x_t.var().item()
    assert mean == pytest.approx((1 - t) * -1.0 + t * 2.0, abs=0.01)
    assert var == pytest.approx(sigma**2 * t * (1 - t), rel=0.02)
    # drift target points from x_t to x1 in the remaining time
    torch.testing.assert_close(s.target, (x1 - s.x_t) / (1 - t))


def test_bridge_drift_has_the_bridge_as_its_law():
    """Simulating dX = (x1 - X)/(1 - t) dt + sigma dW from x0 reproduces the bridge marginals (tol 3 %)."""
    sigma, n, steps = 0.5, 50_000, 400
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(n)
    x1 = 1.0
    h = 1.0 / steps
    for k in range(steps // 2):  # integrate to t = 0.5
        t = k * h
        x = x + (x1 - x) / (1 - t) * h + sigma * math.sqrt(h) * torch.randn(n, generator=g)
    assert x.mean().item() == pytest.approx(0.5, abs=0.01)
    assert x.var().item() == pytest.approx(sigma**2 * 0.25, rel=0.03)


def test_bridge_clips_time_near_one():
    path = BrownianBridgePath(0.5, eps=0.01)
    s = path.sample(torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([0.2, 0.995, 1.0]))
    assert s.t.max().item() == pytest.approx(0.99)
    assert torch.isfinite(s.target).all()


def test_build_path_and_bad_sigma():
    assert isinstance(build_path(0.0), LinearPath)
    assert isinstance(build_path(0.3), BrownianBridgePath)
    with pytest.raises(ConfigError):
        build_path(-1.0)
    with pytest.raises(ConfigError):
        BrownianBridgePath(0.0)


def test_logit_normal_time_sampler_matches_its_density():
    sampler = TimeSampler("logit-normal", mean=0.3, std=0.8)
    t = sampler.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    hist = torch.histc(t, bins=20, min=0, max=1) / (t.numel() * 0.05)
    centres = (torch.arange(20) + 0.5) / 20
    torch.testing.assert_close(hist, sampler.density(centres), atol=0.06, rtol=0.06)
    u = TimeSampler("uniform").sample(100_000, generator=torch.Generator().manual_seed(0))
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError):
        TimeSampler("beta")
