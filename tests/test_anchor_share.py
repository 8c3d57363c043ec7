"""--anchor-share: Theorem 2's phases with a share of each batch drawn from a fixed set of q0's samples.

In phase n the policy's samples (law q_{n-1}) are weighted by exp(tau r) and the anchor's (law q0) by
exp(n tau r), each part normalised to mean 1, so that the batch's weighted law is the mixture
(1 - rho) q_{n-1} exp(tau r) + rho q0 exp(n tau r).  Both parts equal q0 exp(n tau r) when the policy is
exact; when it is not (a fitting error), the anchor's part does not carry that error into the next phase.

Checked against a closed form: q0 = N(0, 1) (a zero velocity field), a policy N(mu, 1) (a constant field mu)
and r(x) = x, whose tilts are shifted Gaussians: exp(c x) N(m, 1) = N(m + c, 1).
"""

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
    settings = {"tau": 0.25, "target_beta": 0.5, "refresh_every": 10, "rwr_samples": 100_000, "anchor_share": 0.25,
                "train": TrainConfig(steps=100, batch_size=20_000), **kw}
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


@pytest.mark.parametrize("step,phase", [(0, 1), (25, 3), (45, 5), (90, 8)])
def test_the_batch_fits_the_mixture_of_the_two_tilts(step, phase):
    """N = 1/(0.5 * 0.25) = 8 phases of 10 steps; a policy N(0.3, 1) and q0 = N(0, 1); r(x) = x.  The policy's
    part must hold N(0.3 + tau, 1) and the anchor's N(n tau, 1) with n = the step's phase (8 after the last).
    Seeds fixed; the weighted means' errors are about 1 / sqrt(ESS) (ESS >= 0.02 * 5000 at n tau = 2, so <= 0.1
    there, 0.02 elsewhere): the tolerance is 0.03 + 0.04 n tau.  Mutation checks: anchor weights exp(tau r) (not
    n tau), or the phase counted from 0, miss by tau = 0.25."""
    cfg = config()
    assert cfg.target_refreshes == 8 and cfg.anchor_size == 5000 and cfg.phase_at(step) == phase
    obj = objective(cfg)
    torch.set_default_dtype(torch.float64)
    try:
        x1, cond, r, valid = obj.next_batch(ConstantField(0.3), step, torch.Generator().manual_seed(1))
        w = obj.weights(r, valid, step)
    finally:
        torch.set_default_dtype(torch.float32)
    p = x1.shape[0] - cfg.anchor_size
    assert x1.shape == (20_000, 1) and torch.equal(r, x1[:, 0].to(r.dtype))
    assert float(w[:p].mean()) == pytest.approx(1.0) and float(w[p:].mean()) == pytest.approx(1.0)
    c = phase * cfg.tau
    assert weighted_mean(x1[:p], w[:p]) == pytest.approx(0.3 + cfg.tau, abs=0.03)
    assert weighted_mean(x1[p:], w[p:]) == pytest.approx(c, abs=0.03 + 0.04 * c)
    # the whole batch: the (p, a) mixture of the two, as the loss mean_i w_i |v - u_i|^2 sees it
    assert weighted_mean(x1, w) == pytest.approx((p * (0.3 + cfg.tau) + cfg.anchor_size * c) / 20_000,
                                                 abs=0.03 + 0.01 * c)


def test_the_anchor_is_q0_drawn_once():
    """The anchor set is rwr_samples draws of the reference (N(0, 1) here), drawn when the objective is made; its
    samples do not change with the step or the policy."""
    obj = objective(config(rwr_samples=50_000))
    a = obj.anchor["x"][:, 0]
    assert a.shape == (50_000,) and abs(float(a.mean())) < 0.02 and float(a.std()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(obj.anchor["r"], a.to(obj.anchor["r"].dtype))  # rewards are kept in float32
    before = obj.anchor["x"].clone()
    obj.next_batch(ConstantField(2.0), 35, torch.Generator().manual_seed(2))
    assert torch.equal(obj.anchor["x"], before)


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
    """Interrupted at step 20 and resumed: the anchor set comes back from the checkpoint (it is not drawn again),
    so the weights equal the whole run's."""
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
