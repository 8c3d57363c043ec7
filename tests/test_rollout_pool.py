"""--rollout-pool P: at each refresh, P samples of the sampling policy, reused until the next refresh.

Between two refreshes the policy is frozen, so a batch taken from the pool follows the law of a fresh batch
(the policy's); what changes is the cost (P rollouts and reward calls per refresh, not B per step) and the
reuse.  Checked with a constant velocity field mu, which moves N(0, 1) noise to N(mu, 1) exactly.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from flowsteer import TrainConfig
from flowsteer.methods.configs import AlignConfig
from flowsteer.methods.fixed_set import pool_generator
from flowsteer.methods.orw import RewardWeightedObjective


class ConstantField(nn.Module):
    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(float(mu)))

    def forward(self, t, x, **cond):
        return self.mu.expand_as(x)


def config(**kw) -> AlignConfig:
    settings = {"method": "orw", "tau": 0.5, "refresh_every": 10, "rollout_pool": 20_000, "rollout_solver": "euler",
                "train": TrainConfig(steps=100, batch_size=4_000), **kw}
    return AlignConfig(base="unused", reward="target:1,0", **settings)


def objective(cfg: AlignConfig, seed: int = 0) -> RewardWeightedObjective:
    return RewardWeightedObjective(reference=ConstantField(0.0), reward=lambda x: x[:, 0], config=cfg,
                                   decode=lambda x: x, shape=(1,), sigma=0.0, generator=torch.Generator().manual_seed(seed))


def rows_in(batch: torch.Tensor, pool: torch.Tensor) -> bool:
    return bool(torch.isin(batch[:, 0], pool[:, 0]).all())


def test_batches_come_from_the_pool_of_the_last_refresh():
    """Step 0 copies the model N(0.3, 1) and draws the pool from it; until step 10 every batch is taken from that
    pool, whatever the live model has become; at step 10 the policy is refreshed to N(2, 1) and a new pool drawn.
    The means are checked to 5 standard errors (1 / sqrt(20,000) for the pool, 1 / sqrt(4,000) for a batch)."""
    obj, g = objective(config()), torch.Generator().manual_seed(1)
    x0, *_ = obj.next_batch(ConstantField(0.3), 0, g)
    first = obj.pool.x.clone()
    assert first.shape == (20_000, 1) and float(first.mean()) == pytest.approx(0.3, abs=5 / 20_000 ** 0.5)
    assert rows_in(x0, first) and float(x0.mean()) == pytest.approx(0.3, abs=5 / 4_000 ** 0.5)
    x5, _, r5, valid = obj.next_batch(ConstantField(2.0), 5, g)  # the live model moved; the policy did not
    assert torch.equal(obj.pool.x, first) and rows_in(x5, first) and bool(valid.all())
    assert torch.equal(r5, x5[:, 0].to(r5.dtype))  # the pool keeps each sample's own reward
    x10, *_ = obj.next_batch(ConstantField(2.0), 10, g)
    assert float(obj.pool.x.mean()) == pytest.approx(2.0, abs=5 / 20_000 ** 0.5) and not rows_in(x10, first)


def test_the_pool_costs_its_draws_once_per_refresh():
    """20 steps, a refresh at 0 and 10: 2 x 20,000 rollouts (10 Euler steps each) and reward calls, not 20 x 4,000."""
    obj, g = objective(config()), torch.Generator().manual_seed(1)
    for step in range(20):
        obj.next_batch(ConstantField(0.3), step, g)
    assert obj.budget.reward_calls == 2 * 20_000 and obj.budget.model_evals == 2 * 20_000 * 10


def test_last_refresh_follows_the_refresh_schedule():
    """last_refresh(s) is the largest refresh step <= s, with and without --target-beta (N = 4 phases of 10
    steps: the policy is kept from step 30 on)."""
    for cfg in (config(), config(target_beta=0.5)):
        refreshes = [s for s in range(120) if cfg.refreshes_at(s)]
        assert all(cfg.last_refresh(s) == max(r for r in refreshes if r <= s) for s in range(120))
    assert config(target_beta=0.5).last_refresh(95) == 30 and config().last_refresh(95) == 90


def test_the_pool_generator_is_no_other_stream():
    """Its stream depends on the run's seed and the step only (not on how much of the run's stream was used:
    a resume restores that elsewhere), and is none of the streams a run or a process seeds with seed + k, for
    any pool of the first 50 steps of seeds 0-3 (``seed + step`` would give seed 0's first pool seed 1's)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, generator=pool_generator(g, 10))
    torch.randn(100, generator=g)
    assert torch.equal(torch.randn(5, generator=pool_generator(g, 10)), a)
    plain = {tuple(torch.randn(3, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(200)}
    pools = {tuple(torch.randn(3, generator=pool_generator(torch.Generator().manual_seed(seed), step)).tolist())
             for seed in range(4) for step in range(50)}
    assert len(pools) == 200 and not pools & plain


def test_with_an_anchor_the_policy_part_comes_from_the_pool():
    """--target-beta with --anchor-share 0.25 and a pool: the first B - a rows of a batch are pool samples of the
    policy N(2, 1), the last a are the anchor's samples of q0 = N(0, 1)."""
    cfg = config(target_beta=0.5, anchor_share=0.25, rwr_samples=20_000)
    obj, g = objective(cfg), torch.Generator().manual_seed(1)
    x, *_ = obj.next_batch(ConstantField(2.0), 0, g)
    p = 4_000 - cfg.anchor_size
    assert cfg.anchor_size == 1_000 and rows_in(x[:p], obj.pool.x) and rows_in(x[p:], obj.anchor.x)
    assert float(x[:p].mean()) == pytest.approx(2.0, abs=5 / p ** 0.5)
    assert float(x[p:].mean()) == pytest.approx(0.0, abs=5 / 1_000 ** 0.5)


def test_what_the_pool_needs_is_checked():
    assert config().validate() == [] and config(target_beta=0.5).validate() == []
    (small,) = config(rollout_pool=100).validate()
    assert small == "--rollout-pool (100) must be >= --batch-size (4000)"
    (rwr,) = config(method="rwr").validate()
    assert "--method rwr trains on its fixed set" in rwr and "drop --rollout-pool" in rwr
    grpo = AlignConfig(base="unused", reward="target:1,0", method="flow-grpo", rollout_pool=512).validate()
    assert any("--rollout-pool" in p for p in grpo), grpo


HALF_NAN = """import torch

def reward(x):
    return torch.where(x[:, 0] > 1.5, torch.full_like(x[:, 0], float("nan")), x[:, 0])
"""


@pytest.mark.parametrize("case,options,checkpoint", [
    ("between-refreshes", ["--refresh-every", "20"], "checkpoint-10"),
    ("after-the-last-refresh", ["--method", "orw", "--target-beta", "0.1", "--tau", "5", "--refresh-every", "10"],
     "checkpoint-30"),  # N = 2 phases: refreshed at 0 and 10, then kept; the pool of step 10 serves to step 40
    ("bad-rewards-skipped", ["--refresh-every", "20", "--on-bad-reward", "skip"], "checkpoint-10"),
])
def test_resume_draws_the_same_pool_and_counts_it_once(tmp_path_factory, tmp_path, case, options, checkpoint):
    """The resumed run draws the pool of the last refresh again from the saved policy with that refresh's own
    generator, so the weights and the counts (reward calls, model evaluations, skipped bad rewards) equal the
    whole run's (a pool drawn from the run's generator, of another step, or counted twice fails this)."""
    from safetensors.torch import load_file

    from flowsteer import PretrainConfig, pretrain

    base = tmp_path_factory.mktemp("pool") / "base"
    pretrain(PretrainConfig(data="8gaussians", train=TrainConfig(steps=100, batch_size=128, log_every=50)), base,
             progress="quiet")
    reward = "target:1,0"
    if case == "bad-rewards-skipped":
        (tmp_path / "half_nan.py").write_text(HALF_NAN)
        reward = f"python:{tmp_path / 'half_nan.py'}:reward"
    cmd = [sys.executable, "-m", "flowsteer", "align", "--base", str(base), "--reward", reward, *options,
           "--steps", "40", "--batch-size", "32", "--rollout-pool", "96", "--checkpoint-every", "10",
           "--keep-last", "5", "--log-every", "10", "--eval-every", "0", "--eval-samples", "16", "--quiet"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = subprocess.run([*cmd, "--out", str(whole)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(whole, resumed)
    proc = subprocess.run([*cmd, "--out", str(resumed), "--resume", checkpoint], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fa, fb = (json.loads((d / "final_metrics.json").read_text()) for d in (whole, resumed))
    assert fa["reward_calls"] == fb["reward_calls"] == 2 * 96 and fa["model_evals"] == fb["model_evals"]
    if case == "bad-rewards-skipped":
        logged = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
        skipped = sum(r.get("bad_rewards", 0) * 10 for r in logged if r.get("kind") == "train")  # means of 10 steps
        assert fa["bad_rewards_skipped"] == fb["bad_rewards_skipped"] == round(skipped) > 0
