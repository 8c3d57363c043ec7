"""GFT: gradual fine-tuning toward target samples (Thorkelsdottir & Banerjee, 2026).

**Our reading** (the paper's body was not available; METHODS.md section 3).  At temperature tau the
objective on a coupled minibatch is::

    L_tau(theta) = E ||v_theta(t, x_t) - u_t||^2 + tau E ||v_theta(t, x_t) - v_pre(t, x_t)||^2   (divided by 1 + tau)

Its minimiser is ``v*_tau = (b_q + tau v_pre) / (1 + tau) = lambda b_q + (1 - lambda) v_pre`` with
``lambda = 1 / (1 + tau)``, where ``b_q`` is the target's marginal drift: v_pre as tau -> inf, the
target as tau -> 0.  Because ``E[u_t | x_t] = b_q(t, x_t)`` for any coupling, the conditional and the
marginal objective differ by a constant, so OT couplings keep the same minimiser.  A
:class:`~flowsteer.schedules.TemperatureSchedule` lowers tau stage by stage to a final tau = 0 phase;
``sft`` (standard fine-tuning) is tau = 0 from the first step.  Dividing by ``1 + tau`` (our default)
makes the loss the convex combination ``lambda ||v - u||^2 + (1 - lambda) ||v - v_pre||^2``, so its
scale does not jump between stages.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..bases import base_name, load_base
from ..couplings import build_coupling
from ..data import load_data
from ..errors import ConfigError, DataError
from ..evaluators import AdaptEvaluator, nfe_name
from ..metrics import stability
from ..paths import TimeSampler, build_path
from ..plots import save_metric_vs_nfe, save_metric_vs_step
from ..runs import METRICS_VS_NFE_PLOT, METRICS_VS_STEP_PLOT, Run
from ..schedules import TemperatureSchedule
from ..training import StepOutput, Trainer
from .common import finish_run, fit, prepare_model, run_context, run_device, run_header, start_run_folder
from .configs import AdaptConfig

__all__ = ["AdaptConfig", "GFTObjective", "adapt", "target_samples"]


class GFTObjective:
    """``(||v - u||^2 + tau ||v - v_pre||^2) / (1 + tau)`` on target samples, tau from the schedule."""

    def __init__(self, target: Tensor, *, pretrained: nn.Module, schedule: TemperatureSchedule, sigma: float,
                 coupling: str, batch_size: int, divide: bool = True,
                 condition: Callable[[int], dict[str, Tensor]] | None = None) -> None:
        self.target, self.pretrained, self.schedule = target, pretrained, schedule
        self.condition = condition
        self.path = build_path(sigma)
        self.coupling = build_coupling(coupling)
        self.time_sampler = TimeSampler("uniform")
        self.batch_size, self.divide = batch_size, divide
        for p in pretrained.parameters():
            p.requires_grad_(False)

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        tau = self.schedule(step)
        idx = torch.randint(0, self.target.shape[0], (self.batch_size,), generator=generator, device=self.target.device)
        x1 = self.target[idx]
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        pairs = self.coupling(x0, x1, generator=generator)
        t = self.time_sampler.sample(self.batch_size, generator=generator, device=x1.device)
        s = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        cond = self.condition(self.batch_size) if self.condition is not None else {}
        pred = model(s.t, s.x_t, **cond).float()  # the loss in float32 under autocast
        loss = fm = ((pred - s.target) ** 2).mean()
        if tau > 0:
            with torch.no_grad():
                ref = self.pretrained(s.t, s.x_t, **cond).float()
            loss = loss + tau * ((pred - ref) ** 2).mean()
            if self.divide:
                loss = loss / (1 + tau)
        return StepOutput(loss=loss, metrics={"tau": tau}, monitor=fm.detach())  # divergence: the CFM term, free of tau


def target_samples(config: AdaptConfig, base: Run, batch_size: int) -> tuple[Tensor, Tensor]:
    """The target's training samples (``n_target`` of them, if set) and its held-out split, in data units."""
    data = load_data(config.target, normalize="none")
    if data.train.shape != base.shape:
        raise DataError(f"target {config.target!r} has samples of shape {data.train.shape}, but the base model makes "
                        f"{base.shape}; adapt toward data of the base's shape")
    target = data.train.x
    if config.n_target is not None:
        if config.n_target > len(target):
            raise DataError(f"--n-target {config.n_target} exceeds the {len(target)} target samples available")
        target = target[torch.randperm(len(target), generator=torch.Generator().manual_seed(0), device="cpu")[: config.n_target]]
    elif len(target) < batch_size:
        raise DataError(f"the target has {len(target)} samples, fewer than --batch-size {batch_size}; "
                        "pass --n-target to use a small target set on purpose, or lower --batch-size")
    return target, data.heldout.x


def adapt(config: AdaptConfig, out: str | Path | None, *, progress: str = "auto", resume: bool | str | None = False,
          evaluate: Callable[[Trainer], dict[str, Any]] | None = None) -> Run:
    """Fine-tune ``config.base`` toward the samples of ``config.target`` with GFT (or SFT).

    ``evaluate``: the evaluation callback (default: :class:`~flowsteer.evaluators.AdaptEvaluator`).
    """
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    device = run_device(config.train)
    base = load_base(config.base, prompt=config.prompt, device=device)
    sigma = base.sigma if config.sigma is None else float(config.sigma)
    if sigma != base.sigma:
        raise ConfigError(f"--sigma {sigma} differs from the base's sigma {base.sigma}; GFT blends drifts of one sigma")
    target, heldout = target_samples(config, base, config.train.batch_size)
    schedule = config.temperature()
    ctx = run_context(config.train, device=device, desc="adapt")
    prepared = prepare_model(base, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                             init_lora=config.init_lora)
    condition = base.condition if base.prompt_embeds else None
    objective = GFTObjective(base.normalizer.encode(target).to(device), pretrained=prepared.reference, schedule=schedule,
                             sigma=sigma, coupling=config.coupling, batch_size=ctx.train.batch_size,
                             divide=config.divide, condition=condition)
    if evaluate is None:
        evaluate = AdaptEvaluator(heldout, decode=base.decode, shape=base.shape, sigma=sigma, n=config.eval_samples,
                                  nfes=config.eval_nfes, condition=condition, device=device,
                                  targets=target if config.n_target is not None else None)
    run_config = run_header(
        "adapt", prepared.spec, {**asdict(config), "eval_nfes": list(config.eval_nfes)}, config.train.seed, device=device,
        adapt_method=config.method, base=base_name(config.base), data=base.config["data"],
        target={"spec": config.target, "n_used": int(len(target))}, path=build_path(sigma).to_config(),
        schedule_taus=schedule.stage_taus() if config.method == "gft" else [0.0])
    if "condition" in base.config:
        run_config["condition"] = base.config["condition"]
    out_dir = Path(out) if out is not None else None
    start_run_folder(out_dir, base.prompt_embeds, ctx.dist)
    trainer = fit(prepared.model, objective, config.train, generator=ctx.generator, out=out_dir,
                  run_config=run_config, progress=progress, desc=f"adapt:{config.method}", resume=resume,
                  evaluate=evaluate, eval_every=config.eval_every, dist=ctx.dist)
    quality = nfe_name("w2_to_target", max(config.eval_nfes))
    final = {**trainer.last_eval, **stability(trainer.eval_history, quality), "steps": trainer.step}
    label = f"{config.method} / {config.coupling}"

    def plots(folder: Path) -> None:
        save_metric_vs_step(trainer.eval_history, folder / METRICS_VS_STEP_PLOT, title=label)
        first = trainer.eval_history[0] if trainer.eval_history and trainer.eval_history[0]["step"] == 0 else None
        save_metric_vs_nfe({**({"base (step 0)": first} if first else {}), label: trainer.last_eval},
                           folder / METRICS_VS_NFE_PLOT, title=label)
    return finish_run(trainer, run_config, out_dir, spec=prepared.spec, final=final, dist=ctx.dist,
                      prompt_embeds=base.prompt_embeds, plots=plots)
