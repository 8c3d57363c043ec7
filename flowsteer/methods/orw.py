"""ORW-CFM-W2: online reward-weighted conditional flow matching with a W2 regulariser.

Fan et al., ICLR 2025 (arXiv 2502.06061).  Per step, with a batch ``x1`` from
the sampling policy, rewards ``r_i = r(x1_i)``, fresh noise ``x0``, a coupling
``pi`` (weights follow its indices) and times ``t``::

    L(theta) = mean_i [ w_i ||v_theta(t_i, x_t,i) - u_i||^2 ] + alpha mean_i ||v_theta(t_i, x_t,i) - v_ref(t_i, x_t,i)||^2

with ``w_i = exp(tau r_i)``, normalised by the batch mean (``weights="mean"``,
our default: the same as a softmax over the batch times B, so alpha keeps one
meaning whatever the reward's offset) or raw (``weights="none"``, the released
code).  Squared norms are means over coordinates (as in pretraining).  The
alpha term bounds W2 between the fine-tuned and the reference model's terminal
laws (Gronwall: ``W2^2 <= C int E||v_theta - v_ref||^2 dt``); it is not reward-weighted.

Methods (one loop, one budget):

* ``orw-w2`` - the above; x1 from a lagged copy of theta refreshed every K steps;
* ``orw``    - alpha = 0 (Theorem 2: after N refreshes q_N ~ q_0 exp(N tau r); Lemma 1: collapse);
* ``rwr``    - offline reward-weighted CFM: x1 from one fixed set of reference samples;
* ``raft``   - keep the top fraction of each online batch by reward, unweighted CFM.

``rwr`` and ``raft`` take the W2 term with ``w2=True``.  ``w2_budget = eps``
adapts alpha by dual ascent, ``alpha <- max(0, alpha + eta (m_k / eps - 1))`` with
``m_k`` the step's W2-bound term, so that its running mean stays <= eps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .. import __version__
from ..config import (ALIGN_DEFAULT_ALPHA, ALIGN_DEFAULT_TAU, ALIGN_METHODS, COUPLINGS, SOLVERS, TrainConfig,
                      align_train_defaults)
from ..couplings import build_coupling
from ..errors import ConfigError
from ..metrics import class_histogram, entropy, mean_pairwise_distance, wasserstein2
from ..models import build_model
from ..models.lora import (AdapterDisabled, add_lora, has_lora, lora_spec, save_adapter, swapped_weights,
                           trainable_state_dict)
from ..paths import TimeSampler, build_path
from ..rewards import RewardError, build_reward, score
from ..rewards.protocol import reward_name
from ..runs import Run, load_base
from ..solvers import integrate
from ..distributed import mean_across_ranks, setup, unwrap
from ..training import StepOutput, Trainer, seed_everything
from .common import fit, sampling_copy

METHODS = ALIGN_METHODS
DEFAULT_ALPHA = ALIGN_DEFAULT_ALPHA
DEFAULT_TAU = ALIGN_DEFAULT_TAU


@dataclass
class AlignConfig:
    """Settings of a reward fine-tuning run (all saved in ``config.json``).

    Attributes:
        base: the pretrained run folder (also the reference model v_ref).
        reward: reward spec (see :mod:`flowsteer.rewards`) or a callable.
        method: ``orw-w2`` (default), ``orw``, ``rwr`` or ``raft``.
        alpha: weight of the W2 term (ignored by ``orw``; by ``rwr``/``raft`` unless ``w2``).
        tau: inverse temperature of the weights ``exp(tau r)``; with ``weights="mean"``
            only reward differences matter, so tau is in units of 1/reward.
        refresh_every: K, gradient steps between refreshes of the lagged sampling policy.
        rollout_solver, rollout_steps: how the policy generates x1.
        weights: ``mean`` (w / mean w) or ``none`` (raw exp(tau r), the released code).
        standardize_reward: use ``(r - mean r) / std r`` of the batch instead of r.
        coupling: ``independent``, ``ot`` or ``sinkhorn`` (weights follow the pairs).
        raft_fraction: share of each batch RAFT keeps.
        rwr_samples: size of RWR's fixed reference sample set.
        w2: add the W2 term to ``rwr`` / ``raft``.
        w2_budget: if set, adapt alpha so that the W2-bound term stays <= this.
        dual_lr: step of the dual ascent on alpha (per step, in units of alpha).
        reward_timeout: seconds one reward call may take before the run fails with a clear message.
        misaligned_weights: keep the weights in rollout order after an OT re-pairing, which attaches
            them to the wrong samples (the released code's bug; only for reproducing its effect).
        on_bad_reward: ``stop`` (default) or ``skip`` samples whose reward is NaN/inf.
        prompt: the text that conditions a text-to-image base (``base="diffusers:DIR"``, SD3).
        lora_rank: > 0 trains LoRA adapters of this rank (peft) instead of every weight; the reference
            v_ref is then the same network with its adapters disabled, and the lagged policy copies the
            adapter tensors only.
        lora_alpha: LoRA scale numerator (``alpha / r`` multiplies ``B A``; default: the rank).
        eval_every, eval_samples, eval_solver, eval_steps: evaluation during training.
        train: the shared :class:`TrainConfig`.
    """

    base: str = ""
    reward: Any = "even-digits"
    method: str = "orw-w2"
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_TAU
    refresh_every: int = 50
    rollout_solver: str = "euler"
    rollout_steps: int = 10
    weights: str = "mean"
    standardize_reward: bool = False
    coupling: str = "independent"
    raft_fraction: float = 0.25
    rwr_samples: int = 4096
    w2: bool = False
    w2_budget: float | None = None
    dual_lr: float = 0.02
    misaligned_weights: bool = False
    reward_timeout: float | None = None
    on_bad_reward: str = "stop"
    prompt: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    eval_every: int = 250
    eval_samples: int = 512
    eval_solver: str = "heun"
    eval_steps: int = 25
    train: TrainConfig = field(default_factory=align_train_defaults)

    @property
    def effective_alpha(self) -> float:
        if self.method == "orw" or (self.method in ("rwr", "raft") and not self.w2 and self.w2_budget is None):
            return 0.0
        return float(self.alpha)

    def validate(self) -> list[str]:
        p = self.train.validate()
        if self.method not in METHODS:
            p.append(f"--method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            p.append(f"--alpha must be >= 0 (got {self.alpha})")
        if self.method == "orw" and self.alpha not in (0, DEFAULT_ALPHA):
            p.append("--method orw is ORW-CFM without the W2 term (alpha = 0); use --method orw-w2 to set --alpha")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            p.append(f"--tau must be > 0 (got {self.tau})")
        if self.refresh_every < 1:
            p.append(f"--refresh-every must be >= 1 (got {self.refresh_every})")
        if self.rollout_solver not in SOLVERS or self.eval_solver not in SOLVERS:
            p.append(f"solvers must be one of {', '.join(SOLVERS)}")
        if self.rollout_steps < 1 or self.eval_steps < 1:
            p.append("--rollout-steps and --eval-steps must be >= 1")
        if self.weights not in ("mean", "none"):
            p.append(f"--weights must be mean or none (got {self.weights!r})")
        if self.coupling not in COUPLINGS:
            p.append(f"--coupling must be one of {', '.join(COUPLINGS)} (got {self.coupling!r})")
        if not 0 < self.raft_fraction <= 1:
            p.append(f"--raft-fraction must be in (0, 1] (got {self.raft_fraction})")
        if self.rwr_samples < self.train.batch_size:
            p.append(f"--rwr-samples ({self.rwr_samples}) must be >= --batch-size ({self.train.batch_size})")
        if self.w2_budget is not None and not self.w2_budget > 0:
            p.append(f"--w2-budget must be > 0 (got {self.w2_budget})")
        if self.w2_budget is not None and self.method == "orw":
            p.append("--w2-budget adapts the W2 term's alpha; use it with --method orw-w2 (or rwr/raft)")
        if self.reward_timeout is not None and not self.reward_timeout > 0:
            p.append(f"--reward-timeout must be > 0 seconds (got {self.reward_timeout})")
        if self.dual_lr <= 0:
            p.append(f"--dual-lr must be > 0 (got {self.dual_lr})")
        if self.on_bad_reward not in ("stop", "skip"):
            p.append(f"--on-bad-reward must be stop or skip (got {self.on_bad_reward!r})")
        if self.lora_rank < 0:
            p.append(f"--lora-rank must be >= 0 (got {self.lora_rank})")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            p.append(f"--lora-alpha must be > 0 (got {self.lora_alpha})")
        if self.eval_every < 0 or self.eval_samples < 2:
            p.append("--eval-every must be >= 0 and --eval-samples >= 2")
        return p


def reward_weights(r: Tensor, *, tau: float, normalize: str = "mean", standardize: bool = False,
                   valid: Tensor | None = None) -> Tensor:
    """Weights ``w_i`` of a batch of rewards ``r`` (``[B]``).

    ``normalize="mean"``: ``w = B' softmax(tau r)`` over the ``B'`` valid samples
    (= exp(tau r) / mean exp(tau r)); ``"none"``: ``w = exp(tau r)``.  Invalid
    samples (``valid == False``) get weight 0.  Never returns NaN.
    """
    if valid is None:
        valid = torch.isfinite(r)
    z = torch.where(valid, r, torch.zeros_like(r))
    if standardize:
        zs = z[valid]
        std = zs.std() if zs.numel() > 1 else torch.tensor(1.0)
        z = (z - zs.mean()) / std.clamp_min(1e-8)
    logw = tau * z
    if normalize == "mean":
        logw = torch.where(valid, logw, torch.full_like(logw, -math.inf))
        w = torch.softmax(logw, dim=0) * valid.sum()
    else:
        w = torch.where(valid, torch.exp(logw), torch.zeros_like(logw))
        if not torch.isfinite(w).all():
            raise RewardError(
                f"raw weights exp(tau*r) overflowed (max tau*r = {logw[valid].max().item():.1f}); "
                "use --weights mean or a smaller --tau"
            )
    return w


def orw_loss(pred: Tensor, target: Tensor, ref: Tensor, weights: Tensor, *, alpha: float) -> tuple[Tensor, Tensor]:
    """ORW-CFM-W2's loss on one batch: ``mean_i w_i ||pred_i - u_i||^2 + alpha mean_i ||pred_i - ref_i||^2``.

    ``||.||^2`` is the mean over a sample's coordinates.  Shapes: ``pred``, ``target``, ``ref``
    ``[B, *D]``; ``weights`` ``[B]``.  Returns ``(loss, w2_term)``; the W2 term (the bound on
    W2(q_theta, q_ref)) is not reward-weighted.
    """
    fm = ((pred - target) ** 2).flatten(1).mean(1)
    w2_term = ((pred - ref) ** 2).flatten(1).mean(1).mean()
    return (weights * fm).mean() + alpha * w2_term, w2_term


class LaggedPolicy:
    """The sampling policy theta_old of ORW: the trained tensors as they were at the last refresh.

    A full model is copied once (``deepcopy``) and refreshed with ``load_state_dict``; a LoRA model keeps
    only its adapter tensors, swapped into the live network for each rollout
    (:func:`~flowsteer.models.lora.swapped_weights`), so the base weights exist once.
    """

    def __init__(self, model: nn.Module) -> None:
        model = unwrap(model)
        self.adapter_only = has_lora(model)
        self.net: nn.Module | None = None
        self.weights: dict[str, Tensor] = {}
        if self.adapter_only:
            self.weights = {k: v.detach().clone() for k, v in trainable_state_dict(model).items()}
        else:
            self.net = copy.deepcopy(model).eval()
            for p in self.net.parameters():
                p.requires_grad_(False)

    def refresh(self, model: nn.Module) -> None:
        model = unwrap(model)
        if self.net is not None:
            self.net.load_state_dict(model.state_dict())
            return
        with torch.no_grad():
            for k, v in trainable_state_dict(model).items():
                self.weights[k].copy_(v)

    @contextlib.contextmanager
    def network(self, model: nn.Module) -> Iterator[nn.Module]:
        """The network to roll out with (``model`` itself, adapters swapped, for LoRA)."""
        model = unwrap(model)
        if self.net is not None:
            yield self.net
            return
        was_training = model.training
        with swapped_weights(model, self.weights):
            model.eval()
            try:
                yield model
            finally:
                model.train(was_training)

    def state_dict(self) -> dict[str, Tensor]:
        return self.net.state_dict() if self.net is not None else self.weights

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.net is not None:
            self.net.load_state_dict(state)
            return
        if set(self.weights) != set(state):
            raise ValueError("the saved sampling policy does not match the model's adapter tensors")
        for k, v in state.items():
            self.weights[k].copy_(v)


class RewardWeightedObjective:
    """The loss and sampling policy of ORW-CFM-W2 and its baselines (see the module doc).

    Args:
        reference: the frozen pretrained model (v_ref; also the RWR sampler); for a LoRA model, the same
            network with its adapters disabled (:class:`~flowsteer.models.lora.AdapterDisabled`).
        reward: a reward callable; it sees decoded samples (data units).
        config: :class:`AlignConfig`.
        decode: model units -> data units.
        shape: sample shape; num_classes: > 0 for class-conditional models.
        condition: ``condition(n)`` -> conditions every sample gets (a text-conditioned base's prompt states).
    """

    def __init__(self, *, reference: nn.Module, reward: Any, config: AlignConfig, decode, shape: tuple[int, ...],
                 sigma: float, num_classes: int = 0, generator: torch.Generator, condition=None) -> None:
        self.reference, self.reward, self.cfg = reference, reward, config
        self.decode, self.shape, self.sigma, self.num_classes = decode, shape, sigma, num_classes
        self.condition = condition
        self._pending_policy: dict[str, Tensor] | None = None
        self.path = build_path(sigma)
        self.coupling = build_coupling(config.coupling)
        self.time_sampler = TimeSampler("uniform")
        self.alpha = config.effective_alpha
        self.w2_running: float | None = None
        self.policy: LaggedPolicy | None = None
        self.offline: dict[str, Tensor] | None = None
        self.bad_total = 0
        for p in reference.parameters():
            p.requires_grad_(False)
        if config.method == "rwr":
            self.offline = self._offline_set(generator)

    # -- sampling policy ------------------------------------------------------

    def _labels(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        cond = dict(self.condition(n)) if self.condition is not None else {}
        if self.num_classes:
            cond["y"] = torch.randint(0, self.num_classes, (n,), generator=generator)
        return cond

    def _rollout(self, model: nn.Module, n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        cond = self._labels(n, generator)
        x0 = torch.randn((n, *self.shape), generator=generator)
        res = integrate(model, x0, solver=self.cfg.rollout_solver, steps=self.cfg.rollout_steps, sigma=self.sigma,
                        cond=cond, generator=generator)
        return res.x.clone(), cond

    def _score(self, x1: Tensor, cond: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor]:
        """Rewards ``[B]`` and a validity mask; stops (or skips) on non-finite rewards."""
        r = score(self.reward, self.decode(x1), cond, timeout=self.cfg.reward_timeout, step=step)
        valid = torch.isfinite(r)
        n_bad = int((~valid).sum())
        if n_bad:
            name = reward_name(self.reward)
            if self.cfg.on_bad_reward == "stop" or n_bad == r.numel():
                raise RewardError(
                    f"reward {name!r} returned NaN or inf for {n_bad} of {r.numel()} samples at step {step}; "
                    "fix the reward, or pass --on-bad-reward skip to drop such samples"
                )
            self.bad_total += n_bad
        return r, valid

    def _offline_set(self, generator: torch.Generator) -> dict[str, Tensor]:
        xs, rs, vs, ys = [], [], [], []
        n, b = self.cfg.rwr_samples, self.cfg.train.batch_size
        for start in range(0, n, b):
            x, cond = self._rollout(self.reference, min(b, n - start), generator)
            r, valid = self._score(x, cond, 0)
            xs.append(x), rs.append(r), vs.append(valid)
            if cond:
                ys.append(cond["y"])
        out = {"x": torch.cat(xs), "r": torch.cat(rs), "valid": torch.cat(vs)}
        if ys:
            out["y"] = torch.cat(ys)
        return out

    def next_batch(self, model: nn.Module, step: int, generator: torch.Generator):
        """x1 ``[B, *D]``, its conditions, rewards ``[B]`` and validity for this step."""
        b = self.cfg.train.batch_size
        if self.offline is not None:
            idx = torch.randint(0, self.offline["x"].shape[0], (b,), generator=generator)
            cond = {"y": self.offline["y"][idx]} if "y" in self.offline else {}
            return self.offline["x"][idx], cond, self.offline["r"][idx], self.offline["valid"][idx]
        if self.policy is None:
            self.policy = LaggedPolicy(model)
            if self._pending_policy is not None:
                self.policy.load_state_dict(self._pending_policy)
                self._pending_policy = None
        if step % self.cfg.refresh_every == 0:
            self.policy.refresh(model)
        with self.policy.network(model) as policy:
            x1, cond = self._rollout(policy, b, generator)
        r, valid = self._score(x1, cond, step)
        return x1, cond, r, valid

    def weights(self, r: Tensor, valid: Tensor) -> Tensor:
        cfg = self.cfg
        if cfg.method == "raft":
            k = max(1, int(round(cfg.raft_fraction * int(valid.sum()))))
            masked = torch.where(valid, r, torch.full_like(r, -math.inf))
            keep = torch.zeros_like(r, dtype=torch.bool)
            keep[torch.topk(masked, k).indices] = True
            return keep.float() * (r.numel() / k)
        return reward_weights(r, tau=cfg.tau, normalize=cfg.weights, standardize=cfg.standardize_reward, valid=valid)

    # -- loss -----------------------------------------------------------------

    def weighted_batch(self, model: nn.Module, step: int, generator: torch.Generator):
        """Path sample, weights ``[B]``, conditions, rewards and validity of one step.

        The coupling may re-pair noise and data; weights and conditions are
        re-indexed with its ``index1`` so that ``w[i]`` belongs to ``s.x1[i]``.
        """
        x1, cond, r, valid = self.next_batch(model, step, generator)
        w = self.weights(r, valid)
        x0 = torch.randn(x1.shape, generator=generator)
        pairs = self.coupling(x0, x1, generator=generator)
        if not self.cfg.misaligned_weights:
            w = w[pairs.index1]
        cond = {k: v[pairs.index1] for k, v in cond.items()}
        t = self.time_sampler.sample(x1.shape[0], generator=generator)
        s = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        return s, w, cond, r, valid

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        s, w, cond, r, valid = self.weighted_batch(model, step, generator)
        pred = model(s.t, s.x_t, **cond)
        with torch.no_grad():
            ref = self.reference(s.t, s.x_t, **cond)
        loss, w2_term = orw_loss(pred, s.target, ref, w, alpha=self.alpha)
        w2_value = mean_across_ranks(float(w2_term.detach()))  # the dual variable must agree across ranks
        self.w2_running = w2_value if self.w2_running is None else 0.95 * self.w2_running + 0.05 * w2_value
        alpha_used = self.alpha
        if self.cfg.w2_budget is not None:
            self.alpha = max(0.0, self.alpha + self.cfg.dual_lr * (w2_value / self.cfg.w2_budget - 1.0))
        rv = r[valid]
        metrics: dict[str, Tensor | float] = {
            "reward": rv.mean(), "reward_std": rv.std() if rv.numel() > 1 else 0.0,
            "w2_bound": w2_value, "alpha": alpha_used, "w_max": w.max(),
        }
        if self.cfg.on_bad_reward == "skip":
            metrics["bad_rewards"] = float((~valid).sum())
        return StepOutput(loss=loss, metrics=metrics)

    # -- state for resume -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "w2_running": self.w2_running, "bad_total": self.bad_total,
                "policy": self.policy.state_dict() if self.policy is not None else None, "offline": self.offline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.w2_running, self.bad_total = state["alpha"], state["w2_running"], state["bad_total"]
        if state.get("offline") is not None:
            self.offline = state["offline"]
        if state.get("policy") is not None:
            if self.policy is None:
                self._pending_policy = state["policy"]  # loaded when the policy is made from the model
            else:
                self.policy.load_state_dict(state["policy"])


# --------------------------------------------------------------------------- evaluation


class AlignEvaluator:
    """Metrics of METHODS.md section 4 on a fixed noise batch: reward, diversity, classes, W2 to the reference."""

    def __init__(self, *, reference: nn.Module, reward: Any, config: AlignConfig, decode, shape, sigma: float,
                 num_classes: int, condition=None) -> None:
        self.reward, self.cfg, self.decode, self.sigma = reward, config, decode, sigma
        g = torch.Generator().manual_seed(12345)
        n = config.eval_samples
        self.x0 = torch.randn((n, *shape), generator=g)
        self.cond = dict(condition(n)) if condition is not None else {}
        if num_classes:
            self.cond["y"] = torch.randint(0, num_classes, (n,), generator=g)
        self.ref_x = self._sample(reference)

    def _sample(self, model: nn.Module) -> Tensor:
        res = integrate(model, self.x0, solver=self.cfg.eval_solver, steps=self.cfg.eval_steps, sigma=self.sigma,
                        cond=self.cond, generator=torch.Generator().manual_seed(54321))
        return self.decode(res.x)

    def metrics_of(self, x: Tensor) -> dict[str, Any]:
        r = score(self.reward, x, self.cond, timeout=self.cfg.reward_timeout)
        r = r[torch.isfinite(r)]
        out: dict[str, Any] = {
            "reward_mean": float(r.mean()), "reward_std": float(r.std()), "reward_max": float(r.max()),
            "pairwise_distance": mean_pairwise_distance(x),
            "w2_to_reference": wasserstein2(x, self.ref_x),
        }
        classify = getattr(self.reward, "classify", None)
        if callable(classify):
            hist = class_histogram(classify(x), int(getattr(self.reward, "num_classes", 10)))
            out["class_histogram"] = [round(float(v), 4) for v in hist]
            out["class_entropy"] = entropy(hist)
        return out

    def __call__(self, trainer: Trainer) -> dict[str, Any]:
        if trainer.ema is None:
            return self.metrics_of(self._sample(trainer.model.eval()))
        with swapped_weights(trainer.model, trainer.sampling_state_dict()) as model:
            return self.metrics_of(self._sample(model.eval()))


# --------------------------------------------------------------------------- entry points


def align(config: AlignConfig, out: str | Path | None, *, progress: str = "auto", resume: bool = False) -> Run:
    """Fine-tune ``config.base`` toward ``config.reward``; returns the fine-tuned :class:`Run`.

    The run folder ``out`` loads with :func:`flowsteer.load_run` like any other.
    """
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    dist = setup()
    local = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                  batch_size=dist.local_batch(config.train.batch_size)))
    base = load_base(config.base, prompt=config.prompt)
    reward = build_reward(config.reward)
    generator = seed_everything(config.train.seed)  # the same on every rank: the same initial weights
    if dist.enabled:  # each rank rolls out its own samples; rank 0's stream is the single-process one
        generator = torch.Generator().manual_seed(dist.rank_seed(config.train.seed))
    spec = dict(base.config["model"])
    if config.lora_rank:
        if spec.get("lora"):
            raise ConfigError("--lora-rank: the base already carries a LoRA adapter; align it without --lora-rank "
                              "(that trains its adapter further)")
        # one network: the adapters train, and with them disabled it is the reference
        model = base.model
        spec["lora"] = lora_spec(model, rank=config.lora_rank, alpha=config.lora_alpha)
        add_lora(model, spec["lora"])
        model.train()
        reference: nn.Module = AdapterDisabled(model)
    else:
        model = build_model(spec)
        model.load_state_dict(base.model.state_dict())
        reference = base.model.eval()
    decode = base.decode
    condition = base.condition if base.prompt_embeds else None
    objective = RewardWeightedObjective(
        reference=reference, reward=reward, config=local, decode=decode, shape=base.shape, sigma=base.sigma,
        num_classes=base.num_classes, generator=generator, condition=condition,
    )
    evaluators: list[AlignEvaluator] = []

    def evaluate(trainer: Trainer) -> dict[str, Any]:  # built on first use: only rank 0 evaluates
        if not evaluators:
            evaluators.append(AlignEvaluator(reference=reference, reward=reward, config=config, decode=decode,
                                             shape=base.shape, sigma=base.sigma, num_classes=base.num_classes,
                                             condition=condition))
        return evaluators[0](trainer)
    settings = asdict(config)
    settings["reward"] = reward_name(reward) if not isinstance(config.reward, str) else config.reward
    run_config = {
        "flowsteer_version": __version__, "method": "align", "align_method": config.method,
        "base": _base_name(config.base), "model": spec, "data": base.config["data"],
        "path": base.config["path"], "settings": settings, "seed": config.train.seed,
    }
    if "condition" in base.config:
        run_config["condition"] = base.config["condition"]
    out_dir = Path(out) if out is not None else None
    if dist.enabled:
        run_config["distributed"] = {"world_size": dist.world_size, "rank_seeds": [
            config.train.seed + r for r in range(dist.world_size)], "batch_per_rank": local.train.batch_size}
    if out_dir is not None and base.prompt_embeds and dist.is_main:
        from ..io import atomic_path
        from ..runs import PROMPT_FILE
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / PROMPT_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in base.prompt_embeds.items()}, str(tmp))
    trainer = fit(model, objective, config.train, generator=generator, out=out_dir, run_config=run_config,
                  progress=progress, desc=f"align:{config.method}", resume=resume, evaluate=evaluate,
                  eval_every=config.eval_every, dist=dist)
    final = {**trainer.last_eval, "final_alpha": objective.alpha, "w2_bound_running": objective.w2_running,
             "bad_rewards_skipped": objective.bad_total, "steps": trainer.step}
    if dist.enabled:
        final["ranks_in_sync"] = trainer.ranks_in_sync
    run_config["final"] = final
    if out_dir is not None and dist.is_main:
        from ..io import atomic_write_json
        from ..runs import write_config
        from ..plots import save_training_curves

        write_config(out_dir, {**run_config, "steps_done": trainer.step})
        atomic_write_json(out_dir / "final_metrics.json", final)
        if spec.get("lora"):
            save_adapter(model, out_dir, spec["lora"], weights=trainer.sampling_state_dict())
        save_training_curves(out_dir / "metrics.jsonl", out_dir / "reward_curve.png",
                             title=f"{config.method} alpha={config.effective_alpha:g} tau={config.tau:g}")
    if spec.get("lora"):  # the trained network itself, holding its sampling (EMA) adapter weights
        from ..models.lora import load_trainable_state_dict

        load_trainable_state_dict(model, {k: v.clone() for k, v in trainer.sampling_state_dict().items()})
        sampler = model.eval()
    else:
        sampler = sampling_copy(trainer, spec, build_model)
    return Run(model=sampler, config={**run_config, "steps_done": trainer.step}, path=out_dir,
               prompt_embeds=base.prompt_embeds)


def _base_name(base: str) -> str:
    """The base as saved in ``config.json``: an absolute run folder, or ``diffusers:ABSOLUTE_DIR``."""
    if str(base).startswith("diffusers:"):
        return "diffusers:" + str(Path(str(base).split(":", 1)[1]).resolve())
    return str(Path(base).resolve())


def align_sweep(config: AlignConfig, alphas: list[float], out: str | Path, *, progress: str = "auto") -> dict[str, Any]:
    """Run :func:`align` once per alpha into ``out/alpha-A``; write ``sweep.json`` and ``pareto.png``."""
    out = Path(out)
    runs = []
    for a in alphas:
        cfg = copy.deepcopy(config)
        cfg.alpha = float(a)
        align(cfg, sweep_run_dir(out, a), progress=progress)
        runs.append(sweep_run_dir(out, a))
    if not setup().is_main:
        return {"points": []}
    return write_sweep_summary(out, runs)


def sweep_run_dir(out: str | Path, alpha: float) -> Path:
    """Where a sweep keeps its run for ``alpha``: ``out/alpha-A``."""
    return Path(out) / f"alpha-{alpha:g}"


def write_sweep_summary(out: str | Path, runs: list[Path]) -> dict[str, Any]:
    """Write ``out/sweep.json`` and ``out/pareto.png`` from finished align runs of one base and reward."""
    import json

    from ..io import atomic_write_json
    from ..plots import save_pareto

    out = Path(out)
    points, settings = [], {}
    for run in runs:
        cfg = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
        settings = cfg["settings"]
        points.append({"alpha": float(settings["alpha"]), "run": str(run), **cfg["final"]})
    points.sort(key=lambda p: p["alpha"])
    summary = {"reward": settings.get("reward"), "method": settings.get("method"), "tau": settings.get("tau"),
               "steps": settings.get("train", {}).get("steps"), "points": points}
    atomic_write_json(out / "sweep.json", summary)
    save_pareto(points, out / "pareto.png", title=f"{summary['method']}: reward vs diversity over alpha")
    return summary
