"""Flow-GRPO (Liu et al. 2025, ``yifan123/flow_grpo``) on flowsteer's one Trainer.

A round of rollouts: ``B`` trajectories of the SDE sampler (:mod:`flowsteer.sde`, noise ``--sde-noise a``,
``--rollout-steps K``) drawn by the current network, in groups of ``--group-size`` sharing a condition; their
rewards give group-standardised advantages ``A_i`` (:func:`~flowsteer.methods.online.group_advantages`).
Each round is trained on for ``--rollout-updates U`` optimiser steps; each step's loss over the trained
steps ``k`` of the window and the samples ``i``::

    rho_ik = exp(log p_theta(x_k+1 | x_k) - log p_old(x_k+1 | x_k))
    L = mean_ik max(-A_i rho_ik, -A_i clip(rho_ik, 1 - eps, 1 + eps)) + beta mean_ik KL_ik

with ``eps`` = ``--clip-range`` and ``beta`` = ``--kl-beta``; ``KL_ik`` is the Gaussian KL between the policy's
and the reference's step (the same std, so ``mean_coords (mean_theta - mean_ref)^2 / (2 std_k^2)``; the
reference is the base, or the same network with its LoRA adapters disabled).

The speed options of Flow-GRPO(-Fast): ``--sde-window W`` makes only W consecutive steps (from a random start
each round, drawn from the run's generator on the device) stochastic and trains on those W steps alone; and
training rollouts take ``--rollout-steps`` steps while evaluation takes ``--eval-steps``.

On-policy exactness: the old log-probabilities are the rollout's own, and each trained step recomputes its
velocity on exactly the rollout's inputs (one call per step, the rollout's batch shape, the same autocast), so
before the first update of a round ``rho`` is exactly 1 (``last_ratio`` keeps the latest ratios for checks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..interrupts import interruptible
from ..sde import SDEGrid, call_velocity, gaussian_kl, gaussian_log_prob, sde_grid, sde_sample, sde_step_mean
from ..training import StepOutput
from .online import GroupedOnlineObjective


def clipped_policy_loss(advantages: Tensor, ratio: Tensor, clip_range: float) -> Tensor:
    """PPO's clipped surrogate ``mean max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``; ``A``, ``rho`` broadcast."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


class FlowGRPOObjective(GroupedOnlineObjective):
    """Flow-GRPO's loss and sampling policy (see the module doc); constructed like ORW's objective."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = self.cfg
        if self.sigma > 0:
            raise ConfigError("--method flow-grpo needs a base trained on straight paths (--sigma 0); its SDE is "
                              f"derived from the ODE's velocity, and this base has sigma {self.sigma:g}")
        self.steps = cfg.rollout_steps
        self.window = cfg.sde_window if 0 < cfg.sde_window < self.steps else 0
        self.grid: SDEGrid = sde_grid(self.steps, cfg.sde_noise, device=self.device)
        self.round: dict[str, Any] | None = None
        self.last_ratio: Tensor | None = None

    # -- sampling policy ------------------------------------------------------

    def rollout_round(self, model: nn.Module, step: int, generator: torch.Generator) -> dict[str, Any]:
        """B trajectories from the current network, their rewards and advantages, kept for the round."""
        b = self.cfg.train.batch_size
        cond = self.labels(b, generator)
        x0 = torch.randn((b, *self.shape), generator=generator, device=self.device)
        if self.window:
            start = torch.randint(0, self.steps - self.window + 1, (), generator=generator, device=self.device)
        else:
            start = torch.zeros((), dtype=torch.long, device=self.device)
        with interruptible():  # changes nothing but the RNG (see flowsteer.interrupts)
            traj = sde_sample(model, x0, steps=self.steps, noise=self.cfg.sde_noise, cond=cond, generator=generator,
                              window=self.window, start=start, grid=self.grid)
        self.budget.forward(b, traj.nfe)
        width = self.window or self.steps
        idx = start + torch.arange(width, device=self.device)
        r, valid = self.rewards(traj.x, cond, step)
        return {"idx": idx, "states": traj.states.index_select(0, torch.cat([idx, idx[-1:] + 1])),
                "old_log_probs": traj.log_probs.index_select(0, idx), "cond": cond, "r": r, "valid": valid,
                "adv": self.advantages(r, valid).float()}

    # -- loss -----------------------------------------------------------------

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        cfg = self.cfg
        if self.round is None or step % cfg.rollout_updates == 0:
            self.round = self.rollout_round(model, step, generator)
        rd = self.round
        g = self.grid
        times, hs, cs, stds = (v.index_select(0, rd["idx"]) for v in (g.times[:-1], g.h, g.c, g.std))
        width = int(rd["idx"].shape[0])  # a shape, not a device read
        self.budget.forward(rd["states"].shape[1], width * (2 if cfg.kl_beta > 0 else 1))  # policy (and reference)
        log_ratios, kls, policy_terms = [], [], []
        for j in range(width):
            x, x_next = rd["states"][j], rd["states"][j + 1]
            mean = sde_step_mean(x, call_velocity(model, times[j], x, rd["cond"]), times[j], hs[j], cs[j])
            log_prob = gaussian_log_prob(x_next, mean, stds[j])
            log_ratio = log_prob - rd["old_log_probs"][j]
            ratio = torch.exp(log_ratio)
            policy_terms.append(clipped_policy_loss(rd["adv"], ratio, cfg.clip_range))
            log_ratios.append(log_ratio.detach())
            if cfg.kl_beta > 0:
                with torch.no_grad():
                    ref_mean = sde_step_mean(x, call_velocity(self.reference, times[j], x, rd["cond"]), times[j],
                                             hs[j], cs[j])
                kls.append(gaussian_kl(mean, ref_mean, stds[j]).mean())
        policy = torch.stack(policy_terms).mean()
        loss = policy + cfg.kl_beta * torch.stack(kls).mean() if kls else policy
        log_ratio_all = torch.stack(log_ratios)  # [steps, B]
        ratio_all = log_ratio_all.exp()
        self.last_ratio = ratio_all
        metrics: dict[str, Tensor | float] = {
            **self.reward_metrics(rd["r"], rd["valid"]), "policy_loss": policy.detach(),
            "clip_fraction": ((ratio_all - 1).abs() > cfg.clip_range).float().mean(),
            "ratio_max_deviation": (ratio_all - 1).abs().max(),
        }
        if kls:
            metrics["kl"] = torch.stack(kls).detach().mean()
        if cfg.on_bad_reward == "skip":
            metrics["bad_rewards"] = (~rd["valid"]).sum().float()
        # The clipped surrogate starts at 0 by construction (advantages have mean 0, ratios are 1), so a multiple of
        # its first value means nothing; the divergence check watches 1 + E[|A| |log r|] (+ beta KL) instead: 1 on
        # policy, above 10^4 only when the policy runs away from its own rollouts (ratios to 0 or to infinity).
        monitor = 1 + (rd["adv"].abs() * log_ratio_all.abs()).mean() + (cfg.kl_beta * metrics["kl"] if kls else 0.0)
        return StepOutput(loss=loss, metrics=metrics, monitor=monitor)

    # -- state for resume -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        rd = state.get("round")
        if rd is not None:
            rd = {k: ({kk: vv.to(self.device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(self.device))
                  for k, v in rd.items()}
        self.round = rd
