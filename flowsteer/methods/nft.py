"""DiffusionNFT (Zheng et al. 2025, ``NVlabs/DiffusionNFT``) on flowsteer's one Trainer.

Per step: a batch ``x1`` of clean samples from the sampling policy ``theta_old`` (ORW's lagged copy, refreshed
every ``--refresh-every`` steps; rollouts with ``--rollout-solver``/``--rollout-steps``), in groups of
``--group-size`` sharing a condition, and their rewards.  Group-standardised advantages (clipped to
``[-5, 5]``, :func:`~flowsteer.methods.online.group_advantages`) become optimality probabilities
``r = clip(A / 5, -1, 1) / 2 + 1/2`` in [0, 1] (DiffusionNFT's normalisation).  On the forward process of
those samples, ``x_t = (1 - t) x0 + t x1``, target ``u = x1 - x0`` (:mod:`flowsteer.paths`), with
``beta`` = ``--nft-beta``::

    v+ = (1 - beta) v_old + beta v_theta        (implicit positive policy)
    v- = (1 + beta) v_old - beta v_theta        (implicit negative policy)
    L  = mean_i [ r_i ||v+ - u||^2 + (1 - r_i) ||v- - u||^2 ]

``||.||^2`` is the mean over a sample's coordinates.  At ``theta = theta_old``: with ``r = 1/2`` the gradient is
zero, with ``r = 1`` it is ``beta`` times the flow-matching gradient.  The released code writes the loss in
x0-prediction space with an adaptive per-sample weight, divides it by beta, and moves theta_old softly; we keep
the velocity form above by default, and two options add DiffusionNFT's stabilisers:

* ``--nft-adaptive-weight``: each term is the squared error of the data prediction ``x1_hat = x_t + (1 - t) v``,
  ``(1 - t)^2 ||v - u||^2``, divided by its own detached mean absolute error ``(1 - t) mean|v - u|`` (floored
  at 1e-5), so a sample's gradient is bounded however far the model strays;
* ``--nft-old-decay D``: each refresh sets ``theta_old <- D theta_old + (1 - D) theta`` instead of a copy.
A sample whose reward is not finite (``--on-bad-reward skip``) has weight 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..interrupts import interruptible
from ..paths import TimeSampler, build_path
from ..solvers import integrate
from ..training import StepOutput
from .online import ADV_CLIP, GroupedOnlineObjective
from .policy import LaggedPolicy


def optimality_probability(advantages: Tensor) -> Tensor:
    """DiffusionNFT's ``r = clip(A / 5, -1, 1) / 2 + 1/2`` in [0, 1]."""
    return (advantages.clamp(-ADV_CLIP, ADV_CLIP) / ADV_CLIP / 2 + 0.5).clamp(0.0, 1.0)


def nft_loss(pred: Tensor, old: Tensor, target: Tensor, r: Tensor, *, beta: float,
             weights: Tensor | None = None, t: Tensor | None = None) -> Tensor:
    """``mean_i w_i [r_i ||v+ - u||^2 + (1 - r_i) ||v- - u||^2]`` with ``v+ = (1 - beta) old + beta pred`` and
    ``v- = (1 + beta) old - beta pred``; ``pred``, ``old``, ``target`` ``[B, *D]``, ``r``, ``weights``, ``t`` ``[B]``.
    With ``t`` each term is DiffusionNFT's adaptively weighted data-prediction error (module doc)."""
    old = old.detach()
    v_pos = (1 - beta) * old + beta * pred
    v_neg = (1 + beta) * old - beta * pred
    pos, neg = _term(v_pos, target, t), _term(v_neg, target, t)
    per_sample = r * pos + (1 - r) * neg
    if weights is not None:
        per_sample = weights * per_sample
    return per_sample.mean()


def _term(v: Tensor, target: Tensor, t: Tensor | None) -> Tensor:
    """Per sample: ``mean ||v - u||^2``, or with ``t`` the adaptive ``mean e^2 / max(mean |e|, 1e-5)`` (detached
    denominator) of the data-prediction error ``e = (1 - t) (v - u)``."""
    if t is None:
        return ((v - target) ** 2).flatten(1).mean(1)
    err = ((1 - t).reshape(-1, *([1] * (v.dim() - 1))) * (v - target)).flatten(1)
    return (err**2).mean(1) / err.detach().abs().mean(1).clamp(min=1e-5)


class NFTObjective(GroupedOnlineObjective):
    """DiffusionNFT's loss and sampling policy (see the module doc); constructed like ORW's objective."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = build_path(self.sigma)
        self.time_sampler = TimeSampler("uniform")
        self.policy: LaggedPolicy | None = None
        self._pending_policy: dict[str, Tensor] | None = None

    def _policy(self, model: nn.Module) -> LaggedPolicy:
        if self.policy is None:
            self.policy = LaggedPolicy(model)
            if self._pending_policy is not None:
                self.policy.load_state_dict(self._pending_policy)
                self._pending_policy = None
        return self.policy

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        cfg = self.cfg
        policy = self._policy(model)
        if step % cfg.refresh_every == 0:
            policy.refresh(model, decay=cfg.nft_old_decay if step else 0.0)  # the first refresh is the start
        b = cfg.train.batch_size
        cond = self.labels(b, generator)
        x0 = torch.randn((b, *self.shape), generator=generator, device=self.device)
        with policy.network(model) as old_net, interruptible():  # inside the swap of weights (flowsteer.interrupts)
            res = integrate(old_net, x0, solver=cfg.rollout_solver, steps=cfg.rollout_steps, sigma=self.sigma,
                            cond=cond, generator=generator)
            x1 = res.x.clone()
        self.budget.forward(b, res.nfe)
        r, valid = self.rewards(x1, cond, step)
        p_opt = optimality_probability(self.advantages(r, valid)).float()
        noise = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = self.time_sampler.sample(b, generator=generator, device=x1.device)
        s = self.path.sample(noise, x1, t, generator=generator)
        with policy.network(model) as old_net, torch.no_grad():
            old = old_net(s.t, s.x_t, **cond).float()
        pred = model(s.t, s.x_t, **cond).float()
        self.budget.forward(b, 2)  # theta_old and theta on the forward process
        loss = nft_loss(pred, old, s.target, p_opt, beta=cfg.nft_beta, weights=valid.float(),
                        t=s.t if cfg.nft_adaptive_weight else None)
        metrics: dict[str, Tensor | float] = {
            **self.reward_metrics(r, valid), "optimality_mean": p_opt.mean(),
            "old_deviation": ((pred.detach() - old) ** 2).flatten(1).mean(1).mean(),
        }
        if cfg.on_bad_reward == "skip":
            metrics["bad_rewards"] = (~valid).sum().float()
        return StepOutput(loss=loss, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "policy": self.policy.state_dict() if self.policy is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("policy") is not None:
            if self.policy is None:
                self._pending_policy = state["policy"]
            else:
                self.policy.load_state_dict(state["policy"])
