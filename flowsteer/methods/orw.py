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

``orw`` with ``target_beta`` (Theorem 2 as a stopping rule) refreshes the policy at 0, K, ..., (N-1)K only,
N = 1/(beta tau), and keeps it; ``anchor_share`` mixes an anchor of q0's samples into each batch, and
``rollout_pool`` reuses a pool of the policy's samples drawn at each refresh (:mod:`flowsteer.methods.fixed_set`).

``rwr`` and ``raft`` take the W2 term with ``w2=True``.  ``w2_budget = eps``
adapts alpha by dual ascent, ``alpha <- max(0, alpha + eta (m_k / eps - 1))`` with
``m_k`` the step's W2-bound term, so that its running mean stays <= eps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..bases import base_name, load_base
from ..couplings import build_coupling
from ..distributed import mean_across_ranks
from ..errors import ConfigError
from ..evaluators import AlignEvaluator, SampleMetrics
from ..interrupts import interruptible
from ..paths import TimeSampler, build_path
from ..plots import save_training_curves
from ..rewards import build_reward, score
from ..rewards.protocol import finite_rewards, reward_name
from ..runs import METRICS_FILE, REWARD_CURVE_PLOT, Run
from ..solvers import integrate
from ..training import StepOutput, Trainer
from .baselines import BASELINE_OBJECTIVES
from .budget import align_final, run_title
from .common import finish_run, fit, prepare_model, run_context, run_device, run_header, start_run_folder
from .objective_base import AlignObjectiveBase
from .configs import AlignConfig
from .fixed_set import FixedSet, counted, pool_generator
from .policy import LaggedPolicy
from .weighting import anchor_mixture_weights, reward_weights

__all__ = ["AlignConfig", "RewardWeightedObjective", "align", "orw_loss", "reward_weights"]


def orw_loss(pred: Tensor, target: Tensor, ref: Tensor, weights: Tensor, *, alpha: float) -> tuple[Tensor, Tensor]:
    """ORW-CFM-W2's loss on one batch: ``mean_i w_i ||pred_i - u_i||^2 + alpha mean_i ||pred_i - ref_i||^2``.

    ``||.||^2`` is the mean over a sample's coordinates.  Shapes: ``pred``, ``target``, ``ref``
    ``[B, *D]``; ``weights`` ``[B]``.  Returns ``(loss, w2_term)``; the W2 term (the bound on
    W2(q_theta, q_ref)) is not reward-weighted.
    """
    fm = ((pred - target) ** 2).flatten(1).mean(1)
    w2_term = ((pred - ref) ** 2).flatten(1).mean(1).mean()
    return (weights * fm).mean() + alpha * w2_term, w2_term


class RewardWeightedObjective(AlignObjectiveBase):
    """The loss and sampling policy of ORW-CFM-W2 and its baselines (see the module doc).

    Args:
        reference: the frozen pretrained model (v_ref; also the RWR sampler); for a LoRA model, the same
            network with its adapters disabled (:class:`~flowsteer.models.lora.AdapterDisabled`).
        reward: a reward callable; it sees decoded samples (data units).
        config: :class:`AlignConfig`.
        decode: model units -> data units.
        shape: sample shape; num_classes: > 0 for class-conditional models.
        condition: ``condition(n)`` -> conditions every sample gets (a text-conditioned base's prompt states).
        device: where the rollouts, rewards' inputs and the dual variable live (default: the generator's).

    The W2-budget dual variable ``alpha`` and the running W2 term are device tensors, updated without a host
    synchronisation; they are read on the host only for checkpoints and the final figures.

    Rollouts and reward calls are interruptible regions (:mod:`flowsteer.interrupts`): they change nothing
    but the RNG, which the Trainer rewinds when a stop signal cuts a step short.
    """

    def __init__(self, *, reference: nn.Module, reward: Any, config: AlignConfig, decode, shape: tuple[int, ...],
                 sigma: float, num_classes: int = 0, generator: torch.Generator, condition=None,
                 device: torch.device | None = None) -> None:
        super().__init__(reference=reference, reward=reward, config=config, decode=decode, shape=shape, sigma=sigma,
                         num_classes=num_classes, generator=generator, condition=condition, device=device)
        self._pending_policy: dict[str, Tensor] | None = None
        self.path = build_path(sigma)
        self.coupling = build_coupling(config.coupling)
        self.time_sampler = TimeSampler("uniform")
        self.alpha: float | Tensor = config.effective_alpha
        if config.w2_budget is not None:
            self.alpha = torch.tensor(float(self.alpha), dtype=self.stat_dtype, device=self.device)
        self.policy: LaggedPolicy | None = None
        # config is this process's: its batch is the run's split over the processes (validate checked the run's)
        if (problem := config.anchor_size_problem("this process's batch of")) is not None:
            raise ConfigError(f"{problem}: raise --batch-size or change --anchor-share")
        # RWR's fixed set, and --anchor-share's (q0's samples, weighted by exp(n tau r) in phase n: Theorem 2's law
        # there) are drawn here, first thing from the run's freshly seeded generator: a resume draws the same sets
        # again (each process its own), so checkpoints do not hold them
        self.offline: FixedSet | None = self._fixed_set(generator) if config.method == "rwr" else None
        self.anchor: FixedSet | None = self._fixed_set(generator) if config.anchor_share > 0 else None
        self.anchor_ess: Tensor | None = None  # of the last batch's anchor part (see weights)
        self.pool: FixedSet | None = None  # --rollout-pool's samples of the policy, drawn at its refresh pool_at
        self.pool_at, self.pool_left_out = None, 0  # (saved: a resume draws the pool again); bad rewards left out

    # -- sampling policy ------------------------------------------------------

    def _labels(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        cond = dict(self.condition(n)) if self.condition is not None else {}
        if self.num_classes:
            cond["y"] = torch.randint(0, self.num_classes, (n,), generator=generator, device=self.device)
        return cond

    def _rollout(self, model: nn.Module, n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        cond = self._labels(n, generator)
        x0 = torch.randn((n, *self.shape), generator=generator, device=self.device)
        with interruptible():  # inside the policy's swap of weights (see flowsteer.interrupts)
            res = integrate(model, x0, solver=self.cfg.rollout_solver, steps=self.cfg.rollout_steps, sigma=self.sigma,
                            cond=cond, generator=generator)
        self.budget.forward(n, res.nfe)
        return res.x.clone(), cond

    def _score(self, x1: Tensor, cond: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor]:
        """Rewards ``[B]`` and a validity mask; stops (or skips) on non-finite rewards (:func:`finite_rewards`)."""
        r = score(self.reward, self.decode(x1), cond, timeout=self.cfg.reward_timeout, step=step)
        self.budget.scored(x1.shape[0])
        valid, n_bad = finite_rewards(self.reward, r, x1, step=step, skip=self.cfg.on_bad_reward == "skip")
        self.bad_total += n_bad
        return r, valid

    def _fixed_set(self, generator: torch.Generator, model: nn.Module | None = None, step: int = 0) -> FixedSet:
        """``rwr_samples`` of the reference (RWR's set, the anchor), or ``rollout_pool`` of ``model``."""
        n = self.cfg.rollout_pool if model is not None else self.cfg.rwr_samples
        return FixedSet.draw(lambda b: self._rollout(self.reference if model is None else model, b, generator),
                             lambda x, cond: self._score(x, cond, step), n=n, batch=self.cfg.train.batch_size)

    def _draw_pool(self, policy: nn.Module, step: int, generator: torch.Generator) -> FixedSet:
        """The pool of the policy refreshed at ``pool_at`` (this step; after a resume, the saved refresh's step)
        from that refresh's own generator; drawn again after a resume, it is the same pool, and not counted."""
        again = not self.cfg.refreshes_at(step)
        self.pool_at = (self.pool_at if self.pool_at is not None else self.cfg.last_refresh(step)) if again else step
        bad = self.bad_total
        with counted(self, keep=not again):
            pool = self._fixed_set(pool_generator(generator, self.pool_at), policy, self.pool_at)
        self.pool_left_out = self.bad_total - bad  # logged once, as the step's bad_rewards
        return pool

    def next_batch(self, model: nn.Module, step: int, generator: torch.Generator):
        """x1 ``[B, *D]``, its conditions, rewards ``[B]`` and validity for this step.  With an anchor, the last
        ``anchor_size`` samples come from the anchor set and the others from the policy."""
        b = self.cfg.train.batch_size
        if self.offline is not None:
            return self.offline.sample(b, generator, self.condition)
        if self.policy is None:
            self.policy = LaggedPolicy(model)
            if self._pending_policy is not None:
                self.policy.load_state_dict(self._pending_policy)
                self._pending_policy = None
        if self.cfg.refreshes_at(step):
            self.policy.refresh(model)
            self.pool = None
        a = self.cfg.anchor_size  # 0 without an anchor
        with self.policy.network(model) as policy:
            if self.cfg.rollout_pool and self.pool is None:
                self.pool = self._draw_pool(policy, step, generator)
            fresh = self._rollout(policy, b - a, generator) if self.pool is None else None
        x1, cond, r, valid = self.pool.sample(b - a, generator, self.condition) if fresh is None else \
            (*fresh, *self._score(*fresh, step))
        if not a:
            return x1, cond, r, valid
        xa, ca, ra, va = self.anchor.sample(a, generator)  # a prompt's states are added for the whole batch below
        cond = {**(self.condition(b) if self.condition is not None else {}),  # a prompt's states, the same for all
                **({"y": torch.cat([cond["y"], ca["y"]])} if "y" in cond else {})}
        return torch.cat([x1, xa]), cond, torch.cat([r, ra]), torch.cat([valid, va])

    def weights(self, r: Tensor, valid: Tensor, step: int | None = None) -> Tensor:
        cfg = self.cfg
        if cfg.method == "raft":
            k = max(1, int(round(cfg.raft_fraction * int(valid.sum()))))
            masked = torch.where(valid, r, torch.full_like(r, -math.inf))
            keep = torch.zeros_like(r, dtype=torch.bool)
            keep[torch.topk(masked, k).indices] = True
            return keep.float() * (r.numel() / k)
        at = f" at step {step}" if step is not None else ""
        source = f"reward {reward_name(self.reward)!r}{at}: "
        a = cfg.anchor_size  # 0 without an anchor
        if not a:
            return reward_weights(r, tau=cfg.tau, normalize=cfg.weights, standardize=cfg.standardize_reward,
                                  valid=valid, source=source)
        if step is None:
            raise ValueError("the anchor's weights depend on the phase: pass the step")
        w, self.anchor_ess = anchor_mixture_weights(r, valid, anchor_size=a, tau=cfg.tau, phase=cfg.phase_at(step),
                                                    source=source)
        return w

    # -- loss -----------------------------------------------------------------

    def weighted_batch(self, model: nn.Module, step: int, generator: torch.Generator):
        """Path sample, weights ``[B]``, conditions, rewards and validity of one step.

        The coupling may re-pair noise and data; weights and conditions are
        re-indexed with its ``index1`` so that ``w[i]`` belongs to ``s.x1[i]``.
        """
        x1, cond, r, valid = self.next_batch(model, step, generator)
        w = self.weights(r, valid, step)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        pairs = self.coupling(x0, x1, generator=generator)
        if not self.cfg.misaligned_weights:
            w = w[pairs.index1]
        cond = {k: v[pairs.index1] for k, v in cond.items()}
        t = self.time_sampler.sample(x1.shape[0], generator=generator, device=x1.device)
        s = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        return s, w, cond, r, valid

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        s, w, cond, r, valid = self.weighted_batch(model, step, generator)
        pred = model(s.t, s.x_t, **cond).float()  # the loss in float32 under autocast
        with torch.no_grad():
            ref = self.reference(s.t, s.x_t, **cond).float()
        self.budget.forward(s.x_t.shape[0], 2)  # the trained network and the reference
        alpha_used = self.alpha
        loss, w2_term = orw_loss(pred, s.target, ref, w, alpha=alpha_used if isinstance(alpha_used, float)
                                 else alpha_used.to(pred.dtype))
        # the dual variable must agree across ranks: the W2 term averaged over them (on the device)
        w2_value = mean_across_ranks(w2_term.detach().to(self.stat_dtype))
        self.w2_running = w2_value if self.w2_running is None else 0.95 * self.w2_running + 0.05 * w2_value
        if self.cfg.w2_budget is not None:
            step_size = self.cfg.dual_lr * (w2_value / self.cfg.w2_budget - 1.0)
            self.alpha = (self.alpha + step_size).clamp_min(0.0)
        p = r.shape[0] - self.cfg.anchor_size
        rv = r[:p][valid[:p]]  # the policy's rollouts (the anchor's fixed samples are not the model's progress)
        metrics: dict[str, Tensor | float] = {
            "reward": rv.mean(), "reward_std": rv.std() if rv.numel() > 1 else 0.0,
            "w2_bound": w2_value, "alpha": alpha_used, "w_max": w.max(),
        }
        if self.anchor is not None:
            metrics["anchor_ess"] = self.anchor_ess
        if self.cfg.on_bad_reward == "skip":
            metrics["bad_rewards"] = float((~valid[:p]).sum()) + self.pool_left_out
            self.pool_left_out = 0
        # the divergence check watches the weighted CFM term, free of the weights' scale (raw ones move it)
        a = alpha_used if isinstance(alpha_used, float) else alpha_used.to(loss.dtype)
        monitor = (loss.detach() - a * w2_term.detach()) / w.mean()
        return StepOutput(loss=loss, metrics=metrics, monitor=monitor)

    # -- state for resume -------------------------------------------------------

    def final_alpha(self) -> float:
        return float(self.alpha)

    def state_dict(self) -> dict[str, Any]:
        running = None if self.w2_running is None else float(self.w2_running)
        return {"alpha": float(self.alpha), "w2_running": running, "bad_total": self.bad_total,
                "budget": self.budget.state_dict(),
                "policy": self.policy.state_dict() if self.policy is not None else None, "pool_at": self.pool_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_total = state["bad_total"]
        self.budget.load_state_dict(state.get("budget"))
        self.alpha = state["alpha"] if self.cfg.w2_budget is None else \
            torch.tensor(state["alpha"], dtype=self.stat_dtype, device=self.device)
        self.w2_running = None if state["w2_running"] is None else \
            torch.tensor(state["w2_running"], dtype=self.stat_dtype, device=self.device)
        # an older checkpoint's "offline" set is the one __init__ has just drawn again: not loaded (with several
        # processes it held process 0's set only)
        self.pool_at = state.get("pool_at")
        if state.get("policy") is not None:
            if self.policy is None:
                self._pending_policy = state["policy"]  # loaded when the policy is made from the model
            else:
                self.policy.load_state_dict(state["policy"])


def align(config: AlignConfig, out: str | Path | None, *, progress: str = "auto", resume: bool | str | None = False,
          evaluate: Callable[[Trainer], dict[str, Any]] | None = None) -> Run:
    """Fine-tune ``config.base`` toward ``config.reward``; returns the fine-tuned :class:`Run`.

    Args:
        out: the run folder to write (None = in memory); it loads with :func:`flowsteer.load_run` like any other.
        progress: ``auto``, ``bar``, ``log`` or ``quiet``.  resume: continue from a checkpoint in ``out``.
        evaluate: the evaluation callback (``evaluate(trainer) -> dict``, run before the first step, every
            ``eval_every`` steps and at the end); default: :class:`~flowsteer.evaluators.AlignEvaluator`.
    """
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    device = run_device(config.train)
    base = load_base(config.base, prompt=config.prompt, device=device)
    reward = build_reward(config.reward)
    ctx = run_context(config.train, device=device, desc="align")  # seeded here: the LoRA init and the copy follow
    prepared = prepare_model(base, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                             init_lora=config.init_lora)
    condition = base.condition if base.prompt_embeds else None
    local = dataclasses.replace(config, train=ctx.train)
    objective = BASELINE_OBJECTIVES.get(config.method, RewardWeightedObjective)(
        reference=prepared.reference, reward=reward, config=local, decode=base.decode, shape=base.shape,
        sigma=base.sigma, num_classes=base.num_classes, generator=ctx.generator, condition=condition, device=device,
    )
    if evaluate is None:
        evaluators: list[AlignEvaluator] = []

        def evaluate(trainer: Trainer) -> dict[str, Any]:  # built on first use: only rank 0 evaluates
            if not evaluators:
                evaluators.append(AlignEvaluator(
                    reference=prepared.reference, metrics=SampleMetrics(reward=reward, reward_timeout=config.reward_timeout),
                    decode=base.decode, shape=base.shape, n=config.eval_samples, solver=config.eval_solver,
                    steps=config.eval_steps, sigma=base.sigma, num_classes=base.num_classes, condition=condition,
                    device=device))
            return evaluators[0](trainer)
    settings = asdict(config)
    settings["reward"] = config.reward if isinstance(config.reward, str) else reward_name(reward)
    run_config = run_header("align", prepared.spec, settings, config.train.seed, device=device, align_method=config.method,
                            base=base_name(config.base), data=base.config["data"], path=base.config["path"])
    if "condition" in base.config:
        run_config["condition"] = base.config["condition"]
    if ctx.dist.enabled:
        run_config["distributed"] = {"world_size": ctx.dist.world_size, "batch_per_rank": ctx.train.batch_size,
                                     "rank_seeds": [config.train.seed + r for r in range(ctx.dist.world_size)]}
    out_dir = Path(out) if out is not None else None
    start_run_folder(out_dir, base.prompt_embeds, ctx.dist)
    budget = objective.budget  # reward calls and model evaluations, logged with each evaluation and in `final`
    trainer = fit(prepared.model, objective, config.train, generator=ctx.generator, out=out_dir,
                  run_config=run_config, progress=progress, desc=f"align:{config.method}", resume=resume,
                  evaluate=budget.evaluating(evaluate), eval_every=config.eval_every, dist=ctx.dist)
    final = align_final(objective, config, trainer, device, ctx.dist)
    title = run_title(config)
    return finish_run(trainer, run_config, out_dir, spec=prepared.spec, final=final, dist=ctx.dist,
                      prompt_embeds=base.prompt_embeds,
                      plots=lambda d: save_training_curves(d / METRICS_FILE, d / REWARD_CURVE_PLOT, title=title))
