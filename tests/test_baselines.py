"""Flow-GRPO and DiffusionNFT (issue 20): closed forms and second methods for the SDE sampler, its
log-probabilities and KL, the on-policy ratio, group advantages and the NFT gradient; bitwise resume."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import cli
from flowsteer.config import TrainConfig
from flowsteer.methods.configs import AlignConfig
from flowsteer.methods.flow_grpo import FlowGRPOObjective, clipped_policy_loss
from flowsteer.methods.nft import nft_loss, optimality_probability
from flowsteer.methods.online import group_advantages
from flowsteer.models.mlp import MLPVelocity
from flowsteer.paths import LinearPath
from flowsteer.sde import gaussian_kl, gaussian_log_prob, sde_grid, sde_sample, sde_step_mean
from flowsteer.solvers import integrate

MU, S = 1.5, 0.5  # data N(MU, S^2) per coordinate


def gaussian_velocity(t, x, **_):
    """The exact velocity of the linear path from N(0, 1) to N(MU, S^2): E[x1 - x0 | x_t = x]."""
    tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    var = (1 - tt) ** 2 + tt**2 * S**2
    return MU + (tt * S**2 - (1 - tt)) / var * (x - tt * MU)


# --------------------------------------------------------------------------- the SDE sampler


def test_sde_with_no_noise_is_the_euler_sampler_bit_for_bit():
    x0 = torch.randn(512, 3, generator=torch.Generator().manual_seed(0))
    for steps in (1, 7, 10):
        euler = integrate(gaussian_velocity, x0, solver="euler", steps=steps).x
        sde = sde_sample(gaussian_velocity, x0, steps=steps, noise=0.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(euler, sde.x), steps
        assert sde.nfe == steps


@pytest.mark.parametrize("noise", [0.5, 1.0])
def test_sde_samples_have_the_data_mean_and_variance(noise):
    """With the exact velocity, the SDE's samples at t = 1 have the data's moments (the ODE's marginals).

    Tolerance: 0.01 on the mean (Monte-Carlo std 0.0011) and 4 % on the variance (Monte-Carlo std 0.3 %; the
    200-step Euler-Maruyama bias, which the first step's t -> t_1 substitution dominates, is about 1 %).
    """
    x0 = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(2))
    x = sde_sample(gaussian_velocity, x0, steps=200, noise=noise, generator=torch.Generator().manual_seed(3)).x
    assert abs(float(x.mean()) - MU) < 0.01
    assert abs(float(x.var()) / S**2 - 1) < 0.04
    # and the noise really was injected: the SDE's samples are not the ODE's
    assert (x - integrate(gaussian_velocity, x0, solver="euler", steps=200).x).abs().mean() > 0.1


def test_sde_step_is_flow_grpo_step_in_their_time_convention():
    """Second method: Flow-GRPO's step, written in its own convention (noise level s = 1 - t runs from 1 to 0,
    the network predicts noise minus data = -v, sigma_max = the second grid level), gives our mean and std."""
    steps, a = 10, 0.7
    grid = sde_grid(steps, a)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    s = 1 - torch.linspace(0, 1, steps + 1, dtype=torch.float64)  # their sigmas: 1 -> 0
    for k in range(steps):
        v = gaussian_velocity(torch.full((32,), float(grid.times[k]), dtype=torch.float64), x)
        sigma, dt = s[k], s[k + 1] - s[k]
        std_dev_t = torch.sqrt(sigma / (1 - (s[1] if sigma == 1 else sigma))) * a
        their_mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + (-v) * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
        ours = sde_step_mean(x, v, grid.times[k].double(), grid.h[k].double(), grid.c[k].double())
        torch.testing.assert_close(ours, their_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grid.std[k].double(), std_dev_t * torch.sqrt(-dt), rtol=1e-6, atol=1e-7)


def test_transition_log_prob_equals_torch_normal():
    g = torch.Generator().manual_seed(4)
    mean, x = torch.randn(8, 2, 3, generator=g), torch.randn(8, 2, 3, generator=g)
    std = torch.tensor(0.37)
    expected = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, rtol=1e-6, atol=1e-6)
    # the sampler's own log-probabilities are those of its transitions
    grid = sde_grid(5, 0.7)
    x0 = torch.randn(16, 2, generator=g)
    traj = sde_sample(gaussian_velocity, x0, steps=5, noise=0.7, generator=torch.Generator().manual_seed(5))
    for k in range(5):
        xk = traj.states[k]
        m = sde_step_mean(xk, gaussian_velocity(grid.times[k].expand(16), xk), grid.times[k], grid.h[k], grid.c[k])
        ref = torch.distributions.Normal(m, grid.std[k]).log_prob(traj.states[k + 1]).flatten(1).mean(1)
        torch.testing.assert_close(traj.log_probs[k], ref, rtol=1e-5, atol=1e-5)


def test_kl_is_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(6)
    mp, mq = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    std = torch.tensor(0.2)
    closed = torch.distributions.kl_divergence(torch.distributions.Normal(mp, std), torch.distributions.Normal(mq, std))
    torch.testing.assert_close(gaussian_kl(mp, mq, std), closed.mean(1), rtol=1e-6, atol=1e-6)
    assert torch.equal(gaussian_kl(mp, mp, std), torch.zeros(5))


# --------------------------------------------------------------------------- Flow-GRPO's objective


def _grpo(model: nn.Module, reference: nn.Module, **options) -> FlowGRPOObjective:
    cfg = AlignConfig(base="unused", reward="unused", method="flow-grpo", rollout_steps=6,
                      train=TrainConfig(batch_size=16), **options)
    assert cfg.validate() == []
    return FlowGRPOObjective(reference=reference, reward=lambda x: -(x - 1.0).pow(2).sum(1), config=cfg,
                             decode=lambda x: x, shape=(2,), sigma=0.0, generator=torch.Generator().manual_seed(0),
                             device=torch.device("cpu"))


def _net(seed: int = 0, num_classes: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLPVelocity(shape=(2,), hidden=32, depth=2, num_classes=num_classes)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_importance_ratio_is_exactly_one_before_the_first_update(precision):
    model = _net()
    obj = _grpo(model, copy.deepcopy(model), sde_window=3, rollout_updates=2)
    g = torch.Generator().manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = obj.loss(model, step=0, generator=g)
    assert obj.last_ratio.shape == (3, 16)
    assert torch.equal(obj.last_ratio, torch.ones_like(obj.last_ratio))
    # after an update on the same round the ratio departs from 1 (the check above can fail)
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad.sign()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        obj.loss(model, step=1, generator=g)
    assert not torch.equal(obj.last_ratio, torch.ones_like(obj.last_ratio))


def test_flow_grpo_divergence_monitor_is_scale_free_and_sees_exploding_ratios():
    """The clipped surrogate starts at 0 (mean-zero advantages, ratio 1), so the divergence check (10^4 times the
    first value) must not watch it: a healthy later |loss| of 0.03 would read as diverged (it stopped a full
    8-Gaussian run at step 1435).  The monitor is 1 + E[|A| |log r|]: exactly 1 on policy, and it grows with the
    log-ratios when the policy runs away from its rollouts."""
    from flowsteer.step_checks import DIVERGENCE_FACTOR, StepChecks

    model = _net()
    obj = _grpo(model, copy.deepcopy(model), sde_window=3, rollout_updates=2)
    out = obj.loss(model, step=0, generator=torch.Generator().manual_seed(1))
    assert abs(out.loss.item()) < 1e-6 and out.monitor.item() == 1.0
    checks = StepChecks(max_bad_steps=3)
    for step, later in enumerate([out.monitor, torch.tensor(1.5), torch.tensor(1.9), torch.tensor(1.2)]):
        checks.add(step, torch.tensor(0.03), torch.tensor(1.0), later)
    checks.settle(None, None)
    assert checks.in_row == 0
    with torch.no_grad():  # run the policy away from the round's rollouts: the ratios, and the monitor, explode
        for p in model.parameters():
            p.mul_(25.0)
    runaway = obj.loss(model, step=1, generator=torch.Generator().manual_seed(1))
    assert runaway.monitor.item() > DIVERGENCE_FACTOR * out.monitor.item()


def test_kl_term_is_zero_at_the_reference_and_the_closed_form_elsewhere():
    model = _net()
    obj = _grpo(model, copy.deepcopy(model), kl_beta=0.5)
    out = obj.loss(model, step=0, generator=torch.Generator().manual_seed(2))
    assert float(out.metrics["kl"]) == 0.0
    other = _net(seed=1)
    obj = _grpo(model, other, kl_beta=0.5)
    out = obj.loss(model, step=0, generator=torch.Generator().manual_seed(2))
    rd, grid = obj.round, obj.grid
    expected = []
    for j, k in enumerate(rd["idx"].tolist()):
        x = rd["states"][j]
        t = grid.times[k].expand(16)
        mp = sde_step_mean(x, model(t, x), grid.times[k], grid.h[k], grid.c[k])
        mq = sde_step_mean(x, other(t, x), grid.times[k], grid.h[k], grid.c[k])
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mp, grid.std[k]),
                                               torch.distributions.Normal(mq, grid.std[k]))
        expected.append(kl.mean(1).mean())
    torch.testing.assert_close(out.metrics["kl"], torch.stack(expected).mean().detach(), rtol=1e-5, atol=1e-7)
    assert float(out.metrics["kl"]) > 0


def test_group_advantages_standardise_within_groups_and_never_nan():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.3, 0.3, 0.3, 0.9], dtype=torch.float64)
    valid = torch.ones(12, dtype=torch.bool)
    a = group_advantages(r, valid, 4)
    assert torch.isfinite(a).all()
    assert torch.equal(a[4:8], torch.zeros(4, dtype=torch.float64))  # a zero-variance group: exactly zero
    first = (r[:4] - 2.5) / (r[:4].std(unbiased=False) + 1e-4)
    torch.testing.assert_close(a[:4], first)
    # equal rewards whose float mean is not exactly them (0.1 * 3 / 3 = 0.1 + 1.4e-17): still exactly zero
    tenth = torch.full((3,), 0.1, dtype=torch.float64)
    assert tenth.sum() / 3 != tenth[0]
    assert torch.equal(group_advantages(tenth, valid[:3], 3), torch.zeros(3, dtype=torch.float64))
    # a one-ulp spread (0.1 + 0.2 vs 0.3) is finite
    r2 = torch.tensor([0.1 + 0.2, 0.3, 0.3, 0.3], dtype=torch.float64)
    assert torch.isfinite(group_advantages(r2, valid[:4], 4)).all()
    # invalid samples count for nothing and get zero; a group with one valid sample gets zero
    valid2 = valid.clone()
    valid2[[0, 9, 10, 11]] = False
    r3 = r.clone()
    r3[0] = float("nan")
    a3 = group_advantages(r3, valid2, 4)
    assert torch.isfinite(a3).all() and a3[0] == 0 and torch.equal(a3[8:], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(a3[1:4], (r[1:4] - 3.0) / (r[1:4].std(unbiased=False) + 1e-4))
    # clipped to +-5 (one outlier in a large group)
    big = torch.zeros(64, dtype=torch.float64)
    big[0] = 1.0
    assert float(group_advantages(big, torch.ones(64, dtype=torch.bool), 64)[0]) == 5.0


def test_class_labels_are_shared_within_a_group():
    model = _net(num_classes=10)
    cfg = AlignConfig(base="unused", reward="unused", method="flow-grpo", group_size=4, train=TrainConfig(batch_size=16))
    obj = FlowGRPOObjective(reference=copy.deepcopy(model), reward=lambda x, y: x[:, 0], config=cfg,
                            decode=lambda x: x, shape=(2,), sigma=0.0, num_classes=10,
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    y = obj.labels(16, torch.Generator().manual_seed(3))["y"].reshape(4, 4)
    assert (y == y[:, :1]).all() and len(set(y[:, 0].tolist())) > 1


def test_clipped_surrogate_is_flat_outside_the_clip_range():
    a = torch.tensor([1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5], requires_grad=True)
    clipped_policy_loss(a, ratio, 0.2).backward()
    assert torch.equal(ratio.grad, torch.zeros(2))  # past the clip in the advantage's direction: no gradient
    ratio = torch.tensor([0.5, 1.5], requires_grad=True)
    clipped_policy_loss(a, ratio, 0.2).backward()
    assert torch.equal(ratio.grad, torch.tensor([-0.5, 0.5]))  # against it: the unclipped (pessimistic) term


# --------------------------------------------------------------------------- DiffusionNFT's loss


def _nft_grads(r_value: float, beta: float):
    model = _net()
    old = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    x1, x0 = torch.randn(32, 2, generator=g) + 2, torch.randn(32, 2, generator=g)
    s = LinearPath().sample(x0, x1, torch.rand(32, generator=g))
    pred = model(s.t, s.x_t)
    with torch.no_grad():
        v_old = old(s.t, s.x_t)
    loss = nft_loss(pred, v_old, s.target, torch.full((32,), r_value), beta=beta)
    nft = torch.autograd.grad(loss, list(model.parameters()))
    fm = torch.autograd.grad(((model(s.t, s.x_t) - s.target) ** 2).mean(1).mean(), list(model.parameters()))
    return nft, fm


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_nft_gradient_is_zero_at_one_half_and_beta_times_flow_matching_at_one(beta):
    nft, fm = _nft_grads(0.5, beta)
    assert max(float(g.abs().max()) for g in nft) < 1e-7
    assert max(float(g.abs().max()) for g in fm) > 1e-3
    nft, fm = _nft_grads(1.0, beta)
    for a, b in zip(nft, fm):
        torch.testing.assert_close(a, beta * b, rtol=1e-5, atol=1e-7)


def _adaptive_fm(v, target, t):
    """DiffusionNFT's weighted data-prediction error, written out: e = (1 - t)(v - u), mean e^2 / mean |e| (detached)."""
    e = (1 - t)[:, None] * (v - target)
    return ((e**2).mean(1) / e.detach().abs().mean(1).clamp(min=1e-5)).mean()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_nft_adaptive_weight_keeps_the_two_gradients_and_bounds_a_sample_s_pull(beta):
    """With --nft-adaptive-weight: r = 1/2 still gives a zero gradient at theta = old; r = 1 gives beta times the
    gradient of the adaptively weighted flow-matching error; and the pull of a sample on v does not grow with
    its error (1000 times the error, the same gradient), which is what keeps NFT from running away."""
    model, g = _net(), torch.Generator().manual_seed(7)
    old = copy.deepcopy(model)
    x1, x0 = torch.randn(32, 2, generator=g) + 2, torch.randn(32, 2, generator=g)
    s = LinearPath().sample(x0, x1, torch.rand(32, generator=g))
    with torch.no_grad():
        v_old = old(s.t, s.x_t)
    params = list(model.parameters())
    half = torch.autograd.grad(nft_loss(model(s.t, s.x_t), v_old, s.target, torch.full((32,), 0.5), beta=beta, t=s.t),
                               params)
    assert max(float(q.abs().max()) for q in half) < 1e-7
    one = torch.autograd.grad(nft_loss(model(s.t, s.x_t), v_old, s.target, torch.ones(32), beta=beta, t=s.t), params)
    fm = torch.autograd.grad(_adaptive_fm(model(s.t, s.x_t), s.target, s.t), params)
    assert max(float(q.abs().max()) for q in fm) > 1e-3
    for a, b in zip(one, fm):
        torch.testing.assert_close(a, beta * b, rtol=1e-5, atol=1e-7)
    pulls = []
    for scale in (1.0, 1000.0):
        v = (s.target + scale * (v_old - s.target)).requires_grad_(True)
        pulls.append(torch.autograd.grad(nft_loss(v, v, s.target, torch.ones(32), beta=beta, t=s.t), v)[0])
    torch.testing.assert_close(pulls[0], pulls[1], rtol=1e-4, atol=1e-8)
    plain = [torch.autograd.grad(nft_loss(v, v, s.target, torch.ones(32), beta=beta), v)[0]
             for v in ((s.target + k * (v_old - s.target)).requires_grad_(True) for k in (1.0, 1000.0))]
    assert plain[1].abs().max() > 100 * plain[0].abs().max()  # without the weight the pull grows with the error


@pytest.mark.parametrize("lora", [False, True])
def test_a_soft_refresh_moves_theta_old_part_of_the_way(lora):
    """--nft-old-decay D: a refresh sets theta_old to D theta_old + (1 - D) theta, for a full copy and for LoRA
    adapters alike; D = 0 copies theta."""
    from flowsteer.methods.policy import LaggedPolicy
    from flowsteer.models.weights import trainable_state_dict

    model = _net()
    if lora:
        from flowsteer.models.lora import add_lora, lora_spec
        model = add_lora(model, lora_spec(model, rank=2, alpha=2))
    policy = LaggedPolicy(model)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    live = trainable_state_dict(model) if lora else model.state_dict()
    policy.refresh(model, decay=0.3)
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, 0.3 * before[k] + 0.7 * live[k])
    policy.refresh(model)
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, live[k], rtol=0, atol=0)


def test_optimality_probability_maps_advantages_into_the_unit_interval():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    assert torch.equal(optimality_probability(a), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("method, options", [
    ("flow-grpo", ["--rollout-updates", "3", "--sde-window", "2", "--kl-beta", "0.01", "--rollout-steps", "4"]),
    ("nft", ["--refresh-every", "7", "--nft-beta", "0.5"]),
])
def test_resume_of_the_new_methods_is_bitwise_exact(method, options, moons_run, tmp_path):
    """Resume from a checkpoint in the middle of a round (flow-grpo) or a policy lag (nft): the same weights."""
    cmd = ["align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--method", method, *options,
           "--steps", "30", "--batch-size", "32", "--checkpoint-every", "10", "--keep-last", "5", "--eval-every", "20",
           "--eval-samples", "16", "--log-every", "5", "--quiet"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = cli(*cmd, "--out", str(whole))
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(whole, resumed)
    proc = cli(*cmd, "--out", str(resumed), "--resume", "checkpoint-20")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the budget's counts continue across the resume (checkpointed with the objective)
    fa, fb = (json.loads((d / "final_metrics.json").read_text()) for d in (whole, resumed))
    assert (fa["reward_calls"], fa["model_evals"]) == (fb["reward_calls"], fb["model_evals"]) and fa["reward_calls"] > 0
    sa = torch.load(whole / "checkpoint-30" / "trainer_state.pt", weights_only=False)
    sb = torch.load(resumed / "checkpoint-30" / "trainer_state.pt", weights_only=False)
    assert all(torch.equal(sa["optimizer"]["state"][i]["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"])
               for i in sa["optimizer"]["state"])
    # the run moved: a resume that restarted from the base would not match
    base = load_file(str(moons_run / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a if k in base)


def test_through_the_cli_with_lora_the_reference_is_the_base_and_each_round_starts_on_policy(moons_run, tmp_path):
    """LoRA adapters start at zero: the KL to the adapter-disabled reference is exactly 0 at the first step, and
    the ratio is exactly 1 at the first step of every round (steps 1 and 3 with --rollout-updates 2), through
    the Trainer; NFT's lagged policy equals the network right after each refresh."""
    import json

    common = ["--steps", "4", "--batch-size", "32", "--lora-rank", "2", "--eval-every", "0", "--eval-samples", "16",
              "--log-every", "1", "--quiet"]
    out = tmp_path / "grpo"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--method", "flow-grpo", "--kl-beta",
               "0.1", "--sde-window", "2", *common, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert train[0]["kl"] == 0.0 and train[1]["kl"] > 0
    assert [r["ratio_max_deviation"] == 0.0 for r in train] == [True, False, True, False]
    out = tmp_path / "nft"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--method", "nft", "--refresh-every", "3",
               *common, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["old_deviation"] == 0.0 for r in train] == [True, False, False, True]


def test_the_sde_window_makes_only_its_steps_noisy():
    """Flow-GRPO-Fast: before the window the states are the Euler sampler's bit for bit; W steps add noise."""
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(8))
    euler = integrate(gaussian_velocity, x0, solver="euler", steps=8, return_trajectory=True).trajectory
    traj = sde_sample(gaussian_velocity, x0, steps=8, noise=0.7, generator=torch.Generator().manual_seed(9), window=3,
                      start=torch.tensor(2))
    assert traj.noisy.tolist() == [False, False, True, True, True, False, False, False]
    assert torch.equal(traj.states[:3], euler[:3]) and not torch.equal(traj.states[3], euler[3])


def test_each_new_option_is_refused_by_the_methods_that_do_not_read_it():
    from flowsteer.config import ALIGN_METHODS
    from flowsteer.methods.baseline_options import NEW_OPTION_OWNERS, NOT_FOR_GRPO, ORW_ONLY

    given = {"group_size": 4, "clip_range": 0.5, "kl_beta": 0.1, "sde_noise": 0.3, "sde_window": 2,
             "rollout_updates": 3, "nft_beta": 0.5, "alpha": 0.3, "tau": 2.0, "weights": "none",
             "standardize_reward": True, "coupling": "ot", "raft_fraction": 0.5, "rwr_samples": 8192, "w2": True,
             "w2_budget": 0.1, "dual_lr": 0.1, "misaligned_weights": True, "refresh_every": 7,
             "rollout_solver": "midpoint", "nft_old_decay": 0.5, "nft_adaptive_weight": True}
    for method in ALIGN_METHODS:
        for name, value in given.items():
            problems = AlignConfig(base="b", reward="r", method=method, **{name: value}).validate()
            flag = "--" + name.replace("_", "-")
            refused = any(q.startswith(flag + " is") for q in problems)
            reads = method in NEW_OPTION_OWNERS[name] if name in NEW_OPTION_OWNERS else \
                method not in ("flow-grpo", "nft") or (name not in ORW_ONLY and not (
                    method == "flow-grpo" and name in NOT_FOR_GRPO))
            assert refused == (not reads), (method, name, problems)
    assert AlignConfig(base="b", reward="r", method="flow-grpo").validate() == []
    assert AlignConfig(base="b", reward="r", method="nft").validate() == []


@pytest.mark.parametrize("method", ["flow-grpo", "nft"])
def test_skipped_non_finite_rewards_get_no_advantage_and_leave_the_loss_finite(method):
    from flowsteer.methods.baselines import BASELINE_OBJECTIVES

    def reward(x):
        r = -(x - 1.0).pow(2).sum(1)
        r[::4] = float("nan")
        return r

    model = _net()
    cfg = AlignConfig(base="unused", reward="unused", method=method, rollout_steps=4, on_bad_reward="skip",
                      train=TrainConfig(batch_size=16))
    obj = BASELINE_OBJECTIVES[method](reference=copy.deepcopy(model), reward=reward, config=cfg, decode=lambda x: x,
                                      shape=(2,), sigma=0.0, generator=torch.Generator().manual_seed(0),
                                      device=torch.device("cpu"))
    out = obj.loss(model, step=0, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert float(out.metrics["bad_rewards"]) == 4 and obj.bad_total == 4
    if method == "flow-grpo":
        assert torch.equal(obj.round["adv"][::4], torch.zeros(4)) and bool((obj.round["adv"] != 0).any())


def test_flow_grpo_refuses_a_bridge_base_and_a_window_longer_than_the_rollout():
    from flowsteer.errors import ConfigError

    model = _net()
    cfg = AlignConfig(base="unused", reward="unused", method="flow-grpo", train=TrainConfig(batch_size=16))
    with pytest.raises(ConfigError, match="--sigma 0"):
        FlowGRPOObjective(reference=copy.deepcopy(model), reward=lambda x: x[:, 0], config=cfg, decode=lambda x: x,
                          shape=(2,), sigma=0.5, generator=torch.Generator(), device=torch.device("cpu"))
    problems = AlignConfig(base="b", reward="r", method="flow-grpo", sde_window=11, rollout_steps=10).validate()
    assert problems == ["--sde-window 11 is longer than the --rollout-steps 10 of a rollout; give at most that many "
                        "steps"]
    assert "deterministic" in AlignConfig(base="b", reward="r", method="flow-grpo", sde_noise=0.0).validate()[0]


def test_the_group_size_binds_only_the_methods_that_group():
    """ORW and its baselines never read --group-size: a batch smaller than its default is fine for them."""
    from flowsteer.methods.configs import AlignConfig
    from flowsteer.config import TrainConfig

    small = TrainConfig(batch_size=4)
    assert AlignConfig(base="b", reward="even-digits", train=small).validate() == []
    problems = AlignConfig(base="b", reward="even-digits", method="nft", train=small).validate()
    assert any("--group-size 8 must divide --batch-size 4" in p for p in problems)


@pytest.mark.parametrize("method", ["flow-grpo", "nft"])
def test_a_stop_signal_during_a_slow_reward_cuts_the_new_methods_step_short(method):
    """The new objectives declare ``interruptible`` like ORW's: SIGTERM inside a slow reward call abandons the
    step at once (the Trainer rewinds it) instead of waiting for the reward to finish."""
    import os
    import signal
    import time

    from flowsteer.errors import Interrupted
    from flowsteer.methods.baselines import BASELINE_OBJECTIVES
    from flowsteer.training import Trainer

    calls: list[str] = []

    def slow(x):
        calls.append("call")
        if len(calls) == 2:  # the second step's reward
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            calls.append("slept through")
        return -(x - 1.0).pow(2).sum(1)

    model = _net()
    cfg = AlignConfig(base="unused", reward="unused", method=method, rollout_steps=3,
                      train=TrainConfig(batch_size=16, steps=4), **({"rollout_updates": 1} if method == "flow-grpo" else {}))
    assert cfg.validate() == []
    objective = BASELINE_OBJECTIVES[method](reference=copy.deepcopy(model), reward=slow, config=cfg, decode=lambda x: x,
                                            shape=(2,), sigma=0.0, generator=torch.Generator().manual_seed(0),
                                            device=torch.device("cpu"))
    trainer = Trainer(model, objective, cfg.train, generator=torch.Generator().manual_seed(0))
    with pytest.raises(Interrupted):
        trainer.fit()
    assert calls == ["call", "call"] and trainer.step == 1  # cut inside the second step's reward, step 1 kept


@pytest.mark.parametrize("method, flag, knob, values", [
    ("flow-grpo", "--kl-beta", "kl_beta", (0.0, 0.05)),
    ("nft", "--nft-beta", "nft_beta", (0.5, 1.0)),
])
def test_a_sweep_of_the_new_methods_knob_runs_one_run_per_value(method, flag, knob, values, moons_run, tmp_path):
    """--kl-beta / --nft-beta A,B sweep like --alpha A,B: one run per value in OUT/kl-beta-A ..., sweep.json
    keyed by the knob, the Pareto plot, and one line per value."""
    out = tmp_path / "sweep"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--method", method,
               flag, ",".join(f"{v:g}" for v in values), "--steps", "4", "--batch-size", "16", "--group-size", "4",
               "--rollout-steps", "3", "--eval-every", "0", "--eval-samples", "16", "--progress", "log", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["knob"] == knob and summary["method"] == method
    assert [p[knob] for p in summary["points"]] == list(values)
    for v, point in zip(values, summary["points"]):
        run = out / f"{flag.lstrip('-')}-{v:g}"
        config = json.loads((run / "config.json").read_text())
        assert config["settings"][knob] == v and config["final"][knob] == v and "final_alpha" not in config["final"]
        assert point["run"] == str(run) and point["reward_calls"] > 0
    assert (out / "pareto.png").is_file()
    said = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith(f"{knob}=")]
    assert said == [f"{knob}={v:g}" for v in values], proc.stdout
