"""ORW-CFM-W2: weights, the W2 term, alignment under OT, and the theory (METHODS.md section 2)."""

import math

import numpy as np
import pytest
import torch

from flowsteer import PretrainConfig, TrainConfig, load_run, pretrain
from flowsteer.errors import ConfigError
from flowsteer.methods.orw import AlignConfig, RewardWeightedObjective, align, reward_weights
from flowsteer.models import build_model
from flowsteer.rewards import RewardError
from flowsteer.solvers import integrate
from flowsteer.training import Trainer, seed_everything

COV = np.diag([1.0, 0.25])


@pytest.fixture(scope="session")
def gaussian_base(tmp_path_factory):
    """A flow pretrained on N(0, diag(1, 0.25)) in 2-D."""
    folder = tmp_path_factory.mktemp("gauss")
    x = np.random.default_rng(0).multivariate_normal([0, 0], COV, size=20_000).astype(np.float32)
    np.save(folder / "g.npy", x)
    cfg = PretrainConfig(data=str(folder / "g.npy"), width=128,
                         train=TrainConfig(steps=1500, batch_size=256, lr=2e-3))
    pretrain(cfg, folder / "run", progress="quiet")
    return folder / "run"


def make_objective(base_dir, reward, **kw):
    base = load_run(base_dir)
    train = kw.pop("train", TrainConfig(steps=10, batch_size=64, lr=1e-3, warmup_steps=1, ema_decay=0.0))
    cfg = AlignConfig(base=str(base_dir), reward=reward, train=train, **kw)
    g = seed_everything(0)
    model = build_model(base.config["model"])
    model.load_state_dict(base.model.state_dict())
    obj = RewardWeightedObjective(reference=base.model, reward=reward, config=cfg, decode=base.normalizer.decode,
                                  shape=base.shape, sigma=base.sigma, num_classes=base.num_classes, generator=g)
    return base, model, obj, cfg, g


# --------------------------------------------------------------------------- weights


def test_mean_weights_are_a_softmax_and_ignore_reward_offsets():
    r = torch.tensor([0.1, 0.5, -0.3, 2.0])
    w = reward_weights(r, tau=2.0)
    torch.testing.assert_close(w, torch.softmax(2.0 * r, 0) * 4)
    assert w.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(reward_weights(r + 100.0, tau=2.0), w)  # offset-free: alpha keeps its meaning
    torch.testing.assert_close(reward_weights(r, tau=2.0, normalize="none"), torch.exp(2.0 * r))


def test_bad_rewards_get_zero_weight_never_nan():
    r = torch.tensor([0.2, float("nan"), 0.4, float("inf")])
    valid = torch.isfinite(r)
    for norm in ("mean", "none"):
        w = reward_weights(r, tau=1.0, normalize=norm, valid=valid)
        assert torch.isfinite(w).all()
        assert w[1] == 0 and w[3] == 0
    w = reward_weights(r, tau=1.0, valid=valid)
    assert w[valid].mean().item() == pytest.approx(1.0)
    with pytest.raises(RewardError, match="overflowed"):
        reward_weights(torch.tensor([1000.0, 0.0]), tau=1.0, normalize="none")


def test_standardized_weights_are_scale_free():
    r = torch.tensor([0.1, 0.5, -0.3, 2.0])
    a = reward_weights(r, tau=1.0, standardize=True)
    b = reward_weights(10 * r + 3, tau=1.0, standardize=True)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- loss structure


def _fixed_batch(obj, x1, r):
    obj.next_batch = lambda model, step, generator: (x1, {}, r, torch.isfinite(r))


def _grads(model, obj, seed):
    model.zero_grad()
    out = obj.loss(model, step=0, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]), out.loss.detach()


def test_scale_equivalence_weights_times_c_with_alpha_times_c(gaussian_base):
    """Raw weights x c (a reward offset log(c)/tau) with alpha x c scales the loss and every gradient by c.

    Gradients proportional at every theta give the same stationary points: the same minimiser.
    """
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    r = -(x1**2).sum(1)
    tau, alpha, c = 0.7, 0.4, 3.0
    _, model, obj1, _, _ = make_objective(gaussian_base, lambda x: -(x**2).sum(1), weights="none", tau=tau, alpha=alpha)
    _fixed_batch(obj1, x1, r)
    g1, l1 = _grads(model, obj1, seed=5)
    _, _, obj2, _, _ = make_objective(gaussian_base, lambda x: -(x**2).sum(1), weights="none", tau=tau, alpha=alpha * c)
    _fixed_batch(obj2, x1, r + math.log(c) / tau)
    g2, l2 = _grads(model, obj2, seed=5)
    assert l2.item() == pytest.approx(c * l1.item(), rel=1e-5)
    torch.testing.assert_close(g2, c * g1, rtol=1e-4, atol=1e-6)
    # with mean-normalised weights the offset changes nothing at all
    _, _, obj3, _, _ = make_objective(gaussian_base, lambda x: -(x**2).sum(1), tau=tau, alpha=alpha)
    _fixed_batch(obj3, x1, r)
    g3, _ = _grads(model, obj3, seed=5)
    _fixed_batch(obj3, x1, r + 17.0)
    g4, _ = _grads(model, obj3, seed=5)
    torch.testing.assert_close(g3, g4)


def test_w2_term_is_not_reward_weighted(gaussian_base):
    """The alpha term is alpha * mean_i ||v - v_ref||^2 with no reward weight, checked against a direct computation."""
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    r = 10 * x1[:, 0]  # extreme weights: weighting the W2 term would change it a lot
    base, model, obj0, _, _ = make_objective(gaussian_base, lambda x: x[:, 0], alpha=0.0)
    _, _, obj5, _, _ = make_objective(gaussian_base, lambda x: x[:, 0], alpha=5.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for obj in (obj0, obj5):
        _fixed_batch(obj, x1, r)
    l0 = obj0.loss(model, step=0, generator=torch.Generator().manual_seed(0)).loss
    out5 = obj5.loss(model, step=0, generator=torch.Generator().manual_seed(0))
    s, w, _, _, _ = obj5.weighted_batch(model, 0, torch.Generator().manual_seed(0))  # the same batch again
    with torch.no_grad():
        per_sample = ((model(s.t, s.x_t) - base.model(s.t, s.x_t)) ** 2).mean(1)
    unweighted, weighted = per_sample.mean(), (w * per_sample).mean()
    assert out5.metrics["w2_bound"] == pytest.approx(unweighted.item(), rel=1e-5)
    assert (out5.loss - l0).item() == pytest.approx(5.0 * unweighted.item(), rel=1e-4)
    assert abs(weighted.item() - unweighted.item()) > 0.1 * unweighted.item()  # the check can tell them apart


@pytest.mark.parametrize("coupling", ["ot", "sinkhorn"])
def test_weights_follow_their_samples_under_ot(gaussian_base, coupling):
    """Regression for torchcfm #142: after OT re-pairing, w[i] must still be the weight of x1[i]."""
    reward = lambda x: 3.0 * x[:, 0] - x[:, 1] ** 2  # noqa: E731
    _, model, obj, cfg, g = make_objective(gaussian_base, reward, coupling=coupling, tau=1.0)
    used = []
    inner = obj.coupling
    obj.coupling = lambda x0, x1, generator=None: used.append(inner(x0, x1, generator=generator)) or used[-1]
    s, w, cond, r, valid = obj.weighted_batch(model, 0, torch.Generator().manual_seed(3))
    assert not torch.equal(used[0].index1, torch.arange(len(w)))  # the coupling did re-pair the batch
    base = load_run(gaussian_base)
    expected = reward_weights(reward(base.normalizer.decode(s.x1)), tau=1.0)
    # expected is computed from the paired x1 itself: equal only if the weights followed the pairs
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)


def test_misaligned_weights_flag_reproduces_the_bug(gaussian_base):
    """--misaligned-weights keeps rollout order: the same weights, attached to the wrong samples."""
    reward = lambda x: 3.0 * x[:, 0] - x[:, 1] ** 2  # noqa: E731
    _, model, obj, cfg, g = make_objective(gaussian_base, reward, coupling="ot", tau=1.0, misaligned_weights=True)
    s, w, cond, r, valid = obj.weighted_batch(model, 0, torch.Generator().manual_seed(3))
    base = load_run(gaussian_base)
    paired = reward_weights(reward(base.normalizer.decode(s.x1)), tau=1.0)
    torch.testing.assert_close(w.sort().values, paired.sort().values, rtol=1e-5, atol=1e-6)  # same multiset
    assert (w - paired).abs().max() > 0.1  # but not on their samples


def test_linear_reward_shifts_the_mean_without_shrinking(gaussian_base):
    """r = b.x on a Gaussian: q_N = N(mu + N tau Sigma b, Sigma) - no collapse (the negative control)."""
    b = torch.tensor([1.0, 2.0])
    tau, K = 0.25, 500
    reward = lambda x: x @ b  # noqa: E731
    train = TrainConfig(steps=2 * K, batch_size=256, lr=1e-3, warmup_steps=20, ema_decay=0.0, log_every=K)
    base, model, obj, cfg, g = make_objective(gaussian_base, reward, method="orw", tau=tau, refresh_every=K,
                                              rollout_solver="heun", rollout_steps=10, train=train)
    Trainer(model, obj, train, generator=g).fit()
    z = integrate(model.eval(), torch.randn(4000, 2, generator=torch.Generator().manual_seed(9)), solver="heun", steps=50).x
    x = base.normalizer.decode(z).numpy()
    expected_mean = 2 * tau * COV @ b.numpy()  # N = 2 refreshes
    cov = np.cov(x.T)
    np.testing.assert_allclose(x.mean(0), expected_mean, atol=0.1 * math.sqrt(COV[1, 1]) * 2)
    np.testing.assert_allclose(np.diag(cov), np.diag(COV), rtol=0.1)  # variances within 10 %


def test_conditional_models_pass_labels_to_rollout_reward_and_loss(tmp_path):
    pretrain(PretrainConfig(data="digits:0,1", conditional=True, train=TrainConfig(steps=5, batch_size=16)),
             tmp_path / "base", progress="quiet")
    seen = {}

    def reward(x, y=None):
        seen["y"] = y
        return torch.zeros(x.shape[0])

    _, model, obj, _, g = make_objective(tmp_path / "base", reward, rollout_steps=2)
    calls = []
    original = model.forward
    model.forward = lambda t, x, y=None, **kw: (calls.append(y), original(t, x, y=y))[1]
    obj.loss(model, step=0, generator=g)
    assert seen["y"] is not None and seen["y"].shape == (64,)
    assert calls and calls[-1] is not None


def test_config_validation():
    with pytest.raises(ConfigError) as err:
        align(AlignConfig(base="x", alpha=-1, tau=0, refresh_every=0, method="orw-w2"), None)
    msg = str(err.value)
    assert "--alpha" in msg and "--tau" in msg and "--refresh-every" in msg


def test_raft_keeps_the_top_fraction_unweighted(gaussian_base):
    _, model, obj, _, _ = make_objective(gaussian_base, lambda x: x[:, 0], method="raft", raft_fraction=0.25)
    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
    w = obj.weights(r, torch.ones(8, dtype=torch.bool))
    assert torch.equal(w > 0, r >= 0.8)  # the top 2 of 8
    assert w[w > 0].unique().tolist() == [4.0] and w.mean().item() == pytest.approx(1.0)  # plain CFM on the kept ones
    assert obj.alpha == 0.0  # no W2 term unless --w2
    _, _, obj_w2, _, _ = make_objective(gaussian_base, lambda x: x[:, 0], method="raft", w2=True, alpha=0.5)
    assert obj_w2.alpha == 0.5


def test_rwr_trains_on_one_fixed_reference_set(gaussian_base):
    calls = []

    def reward(x):
        calls.append(x.shape[0])
        return x[:, 0]

    _, model, obj, _, g = make_objective(gaussian_base, reward, method="rwr", rwr_samples=256)
    assert obj.offline.x.shape == (256, 2) and sum(calls) == 256  # scored once, up front
    x1, _, r, _ = obj.next_batch(model, 0, g)
    rows = {tuple(v) for v in obj.offline.x.tolist()}
    assert all(tuple(v) in rows for v in x1.tolist())  # every batch comes from the fixed set
    for step in range(3):
        obj.loss(model, step=step, generator=g)
    assert sum(calls) == 256 and obj.policy is None  # never re-scored, no online policy


def test_orw_policy_is_lagged_by_k_steps(gaussian_base):
    _, model, obj, cfg, g = make_objective(gaussian_base, lambda x: x[:, 0], refresh_every=3, rollout_steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []
    for step in range(5):
        obj.loss(model, step=step, generator=g).loss.backward()
        snapshots.append(obj.policy.net.out.weight.detach().clone())
        opt.step(), opt.zero_grad()
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])  # frozen for K steps
    assert not torch.equal(snapshots[2], snapshots[3])  # refreshed at step 3 from the trained model
    assert torch.equal(snapshots[3], snapshots[4])


def test_orw_policy_of_a_lora_model_is_lagged_and_leaves_training_untouched(gaussian_base):
    """The LoRA policy lives as adapter tensors: rollouts see the snapshot; the trained tensors are unchanged."""
    pytest.importorskip("peft")
    from flowsteer.models.lora import add_lora, lora_spec
    from flowsteer.models.weights import trainable_state_dict

    _, model, obj, cfg, g = make_objective(gaussian_base, lambda x: x[:, 0], refresh_every=3, rollout_steps=2)
    add_lora(model, lora_spec(model, rank=2))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    snapshots = []
    for step in range(5):
        live = {k: v.clone() for k, v in trainable_state_dict(model).items()}
        obj.loss(model, step=step, generator=g).loss.backward()
        assert all(torch.equal(live[k], v) for k, v in trainable_state_dict(model).items())  # swap restored
        assert obj.policy.net is None
        snapshots.append({k: v.clone() for k, v in obj.policy.weights.items()})
        opt.step(), opt.zero_grad()
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(snapshots[0], snapshots[1]) and same(snapshots[1], snapshots[2])
    assert not same(snapshots[2], snapshots[3]) and same(snapshots[3], snapshots[4])


def test_a_lora_run_on_a_trained_base_reloads_as_it_was_trained(moons_run, tmp_path):
    """A LoRA run whose base is a flowsteer run must reload on that run's trained weights (not on the spec's
    fresh initialisation): the run returned by align and load_run of its folder sample identically."""
    pytest.importorskip("peft")
    from flowsteer.runs import load_run

    train = TrainConfig(steps=6, batch_size=64, warmup_steps=1, ema_decay=0.0, lr=5e-3, log_every=3)
    run = align(AlignConfig(base=str(moons_run), reward="target:1.5,0", lora_rank=2, rollout_steps=2, eval_every=0,
                            eval_samples=64, refresh_every=3, train=train), tmp_path / "lora", progress="quiet")
    assert run.config["model"]["base_weights"].endswith("model.safetensors")
    again = load_run(tmp_path / "lora")
    assert torch.equal(run.sample(64, seed=1).x, again.sample(64, seed=1).x)
    base = load_run(moons_run).sample(64, seed=1).x
    assert not torch.equal(again.sample(64, seed=1).x, base)  # the adapter does something
