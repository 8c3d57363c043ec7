"""--anchor-share: Theorem 2's phases with a share of each batch drawn from a fixed set of q0's samples.

In phase n the policy's samples (law q_{n-1}) are weighted by exp(tau r) and the anchor's (law q0) by
exp(n tau r), each part normalised to mean 1, so that the batch's weighted law is the mixture
(1 - rho) q_{n-1} exp(tau r) + rho q0 exp(n tau r).  Both parts equal q0 exp(n tau r) when the policy is
exact; when it is not (a fitting error), the anchor's part does not carry that error into the next phase.

Checked against a closed form: q0 = N(0, 1) (a zero velocity field), a policy N(mu, 1) (a constant field mu)
and r(x) = x, whose tilts are shifted Gaussians: exp(c x) N(m, 1) = N(m + c, 1).
"""

import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from flowsteer import TrainConfig
from flowsteer.methods.configs import AlignConfig
from flowsteer.methods.orw import RewardWeightedObjective


class ConstantField(nn.Module):
    """v(t, x) = mu: moves N(0, 1) noise to N(mu, 1) exactly, with any number of Euler steps."""

    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(float(mu), dtype=torch.float64))

    def forward(self, t, x, **cond):
        return self.mu.expand_as(x)


def config(**kw) -> AlignConfig:
    settings = {"tau": 0.1, "target_beta": 1.25, "refresh_every": 10, "rwr_samples": 200_000, "anchor_share": 0.5,
                "train": TrainConfig(steps=100, batch_size=40_000), **kw}
    return AlignConfig(base="unused", reward="target:1,0", method="orw", **settings)


def objective(cfg: AlignConfig, seed: int = 0) -> RewardWeightedObjective:
    g = torch.Generator().manual_seed(seed)
    torch.set_default_dtype(torch.float64)
    try:
        return RewardWeightedObjective(reference=ConstantField(0.0), reward=lambda x: x[:, 0], config=cfg,
                                       decode=lambda x: x, shape=(1,), sigma=0.0, generator=g)
    finally:
        torch.set_default_dtype(torch.float32)


def weighted_mean(x: torch.Tensor, w: torch.Tensor) -> float:
    return float((w * x[:, 0]).sum() / w.sum())


def within(x: torch.Tensor, w: torch.Tensor, expected: float) -> None:
    """The weighted mean of a part against its closed form, to 4 standard errors: a tilted N(m, 1) has sd 1, so
    the self-normalised mean's error is about 1 / sqrt(ESS), ESS = (sum w)^2 / sum w^2 (Kish)."""
    ess = float(w.sum() ** 2 / (w * w).sum())
    assert ess > 50, ess
    assert weighted_mean(x, w) == pytest.approx(expected, abs=4 / ess ** 0.5)


@pytest.mark.parametrize("step,phase", [(0, 1), (9, 1), (10, 2), (25, 3), (45, 5), (79, 8), (80, 8), (95, 8)])
def test_the_batch_fits_the_mixture_of_the_two_tilts(step, phase):
    """N = 1/(1.25 * 0.1) = 8 phases of 10 steps; a policy N(0.3, 1) and q0 = N(0, 1); r(x) = x; 20,000 samples
    per part.  The policy's part must hold N(0.3 + tau, 1) and the anchor's N(n tau, 1), n = the step's phase
    (n tau <= 0.8, so ESS >= 0.5 of the part).  Seeds fixed; 4 standard errors, about 0.04 (see within), checked
    to hold for 25 other seeds.  Mutation checks: anchor weights exp(tau r) (not n tau) miss by (n - 1) tau, and
    the phase counted from 0 by tau = 0.1."""
    cfg = config()
    assert cfg.target_refreshes == 8 and cfg.anchor_size == 20_000 and cfg.phase_at(step) == phase
    obj = objective(cfg)
    torch.set_default_dtype(torch.float64)
    try:
        x1, cond, r, valid = obj.next_batch(ConstantField(0.3), step, torch.Generator().manual_seed(1))
        w = obj.weights(r, valid, step)
    finally:
        torch.set_default_dtype(torch.float32)
    p = x1.shape[0] - cfg.anchor_size
    assert x1.shape == (40_000, 1) and torch.equal(r, x1[:, 0].to(r.dtype))
    assert float(w[:p].mean()) == pytest.approx(1.0) and float(w[p:].mean()) == pytest.approx(1.0)
    within(x1[:p], w[:p], 0.3 + cfg.tau)
    within(x1[p:], w[p:], phase * cfg.tau)
    # the logged anchor_ess is Kish's ESS of the anchor part: about a exp(-(n tau)^2) for a Gaussian tilted by n tau
    assert float(obj.anchor_ess) == pytest.approx(float(w[p:].sum() ** 2 / (w[p:] ** 2).sum()))
    assert float(obj.anchor_ess) == pytest.approx(cfg.anchor_size * math.exp(-(phase * cfg.tau) ** 2), rel=0.05)


def test_the_phase_rises_exactly_at_the_refreshes():
    """phase_at and refreshes_at describe one schedule: the phase goes up by one at every refresh after step 0 and
    nowhere else, and stays N once the policy is kept."""
    cfg = config()
    rises = [s for s in range(1, 200) if cfg.phase_at(s) == cfg.phase_at(s - 1) + 1]
    assert rises == [s for s in range(1, 200) if cfg.refreshes_at(s)] == [10, 20, 30, 40, 50, 60, 70]
    assert {cfg.phase_at(s) for s in range(70, 200)} == {8} and cfg.phase_at(0) == 1


def test_the_anchor_is_q0_drawn_once():
    """The anchor set is rwr_samples draws of the reference (N(0, 1) here), drawn when the objective is made; its
    samples do not change with the step or the policy."""
    obj = objective(config(rwr_samples=50_000))
    a = obj.anchor.x[:, 0]
    assert a.shape == (50_000,) and abs(float(a.mean())) < 0.02 and float(a.std()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(obj.anchor.r, a.to(obj.anchor.r.dtype))  # rewards are kept in float32
    before = obj.anchor.x.clone()
    obj.next_batch(ConstantField(2.0), 35, torch.Generator().manual_seed(2))
    assert torch.equal(obj.anchor.x, before)


def test_what_the_anchor_needs_is_checked():
    assert config().validate() == []
    plain = AlignConfig(base="unused", reward="target:1,0", anchor_share=0.5)
    assert plain.validate() == ["--anchor-share anchors Theorem 2's phases to q0; it needs --target-beta"]
    (tiny,) = config(anchor_share=0.00001).validate()
    assert "gives 0 anchor samples per batch" in tiny
    (raw,) = config(weights="none").validate()
    assert "--weights none" in raw
    assert config(anchor_share=0.0).anchor_size == 0


def test_resume_with_an_anchor_is_bitwise_exact(tmp_path_factory, tmp_path):
    """Interrupted at step 10 and resumed: the anchor set is drawn again, first thing from the freshly seeded
    generator, so it is the same set, and the weights equal the whole run's (a set drawn after any other use of
    the generator, or from an unseeded one, fails this)."""
    from safetensors.torch import load_file

    from flowsteer import PretrainConfig, pretrain

    base = tmp_path_factory.mktemp("anchor") / "base"
    pretrain(PretrainConfig(data="8gaussians", train=TrainConfig(steps=100, batch_size=128, log_every=50)), base,
             progress="quiet")
    cmd = [sys.executable, "-m", "flowsteer", "align", "--base", str(base), "--reward", "target:1,0", "--method",
           "orw", "--tau", "5", "--target-beta", "0.1", "--refresh-every", "10", "--steps", "30", "--batch-size", "32",
           "--anchor-share", "0.25", "--rwr-samples", "256", "--checkpoint-every", "10", "--keep-last", "5",
           "--eval-every", "0", "--eval-samples", "16", "--quiet"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = subprocess.run([*cmd, "--out", str(whole)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(whole, resumed)
    proc = subprocess.run([*cmd, "--out", str(resumed), "--resume", "checkpoint-10"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_samples_with_bad_rewards_are_left_out_of_the_fixed_set():
    """--on-bad-reward skip: q0's samples whose reward is NaN (here every x < 0) stay out of the anchor set, so no
    draw from it is all invalid and no weight is NaN (with them in, a draw of 1 anchor sample was NaN 13 times in
    20 steps).  A reward that is never finite stops the run with the message of an all-bad batch."""
    from flowsteer.rewards import RewardError

    def half_nan(x):
        return torch.where(x[:, 0] < 0, torch.full_like(x[:, 0], float("nan")), x[:, 0])

    cfg = config(on_bad_reward="skip", rwr_samples=2000, train=TrainConfig(steps=100, batch_size=64))
    g = torch.Generator().manual_seed(0)
    obj = RewardWeightedObjective(reference=ConstantField(0.0), reward=half_nan, config=cfg, decode=lambda x: x,
                                  shape=(1,), sigma=0.0, generator=g)
    assert 900 < obj.anchor.x.shape[0] < 1100 and bool((obj.anchor.x >= 0).all())
    assert bool(torch.isfinite(obj.anchor.r).all())
    for step in (0, 35, 95):
        x1, cond, r, valid = obj.next_batch(ConstantField(0.3), step, torch.Generator().manual_seed(step))
        assert bool(torch.isfinite(obj.weights(r, valid, step)).all())
    with pytest.raises(RewardError, match="returned NaN or inf for all 64 samples at step 0"):
        RewardWeightedObjective(reference=ConstantField(0.0), reward=lambda x: x[:, 0] * float("nan"), config=cfg,
                                decode=lambda x: x, shape=(1,), sigma=0.0, generator=torch.Generator().manual_seed(0))
