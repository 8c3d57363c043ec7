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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..config import COUPLINGS, TrainConfig, adapt_train_defaults
from ..couplings import build_coupling
from ..data import load_data
from ..errors import ConfigError, DataError
from ..metrics import frechet_distance, path_metrics, stability, wasserstein2
from ..models import build_model
from ..paths import TimeSampler, build_path
from ..runs import Run, load_run
from ..schedules import TemperatureSchedule
from ..solvers import integrate
from ..training import StepOutput, Trainer, seed_everything
from .common import fit, sampling_copy

GFT_METHODS = ("gft", "sft")
EVAL_NFES = (1, 2, 4, 8, 16, 50)


@dataclass
class AdaptConfig:
    """Settings of a GFT / SFT run (saved in ``config.json``).

    Attributes:
        base: pretrained run folder (v_pre).  target: data spec of the target samples.
        method: ``gft`` or ``sft`` (tau = 0 throughout, same budget).
        schedule, tau0, stages, final_fraction: the temperature schedule (see :mod:`flowsteer.schedules`).
        divide: divide the loss by ``1 + tau``.
        coupling: ``independent``, ``ot`` or ``sinkhorn``.
        sigma: None = the base's sigma (a bridge for sigma > 0); it must match the base's.
        n_target: use only this many target samples (the limited-data regime); None = all.
        eval_every, eval_samples, eval_nfes: evaluation during training.
    """

    base: str = ""
    target: str = "moons"
    method: str = "gft"
    schedule: str = "geometric"
    tau0: float = 10.0
    stages: int = 4
    final_fraction: float = 0.25
    divide: bool = True
    coupling: str = "independent"
    sigma: float | None = None
    n_target: int | None = None
    eval_every: int = 500
    eval_samples: int = 1000
    eval_nfes: tuple[int, ...] = EVAL_NFES
    train: TrainConfig = field(default_factory=adapt_train_defaults)

    def temperature(self) -> TemperatureSchedule:
        if self.method == "sft":
            return TemperatureSchedule("constant", 0.0, 1, self.train.steps, 0.0)
        return TemperatureSchedule(self.schedule, self.tau0, self.stages, self.train.steps, self.final_fraction)

    def validate(self) -> list[str]:
        p = self.train.validate()
        if self.method not in GFT_METHODS:
            p.append(f"--method must be gft or sft (got {self.method!r})")
        if self.coupling not in COUPLINGS:
            p.append(f"unknown coupling {self.coupling!r}; choose one of {', '.join(COUPLINGS)}")
        if self.method == "gft" and not self.train.validate():
            try:
                self.temperature()
            except ConfigError as exc:
                p.append(str(exc))
        if self.n_target is not None and self.n_target < 1:
            p.append(f"--n-target must be >= 1 (got {self.n_target})")
        if any(n < 1 for n in self.eval_nfes):
            p.append("every evaluation NFE must be >= 1")
        return p


class GFTObjective:
    """``(||v - u||^2 + tau ||v - v_pre||^2) / (1 + tau)`` on target samples, tau from the schedule."""

    def __init__(self, target: Tensor, *, pretrained: nn.Module, schedule: TemperatureSchedule, sigma: float,
                 coupling: str, batch_size: int, divide: bool = True) -> None:
        self.target, self.pretrained, self.schedule = target, pretrained, schedule
        self.path = build_path(sigma)
        self.coupling = build_coupling(coupling)
        self.time_sampler = TimeSampler("uniform")
        self.batch_size, self.divide = batch_size, divide
        for p in pretrained.parameters():
            p.requires_grad_(False)

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        tau = self.schedule(step)
        idx = torch.randint(0, self.target.shape[0], (self.batch_size,), generator=generator)
        x1 = self.target[idx]
        x0 = torch.randn(x1.shape, generator=generator)
        pairs = self.coupling(x0, x1, generator=generator)
        t = self.time_sampler.sample(self.batch_size, generator=generator)
        s = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        pred = model(s.t, s.x_t)
        loss = ((pred - s.target) ** 2).mean()
        if tau > 0:
            with torch.no_grad():
                ref = self.pretrained(s.t, s.x_t)
            loss = loss + tau * ((pred - ref) ** 2).mean()
            if self.divide:
                loss = loss / (1 + tau)
        return StepOutput(loss=loss, metrics={"tau": tau})


def target_features(x: Tensor) -> Tensor:
    """Features for the Frechet distance: raw coordinates for vectors, the digit classifier's logits for 8x8 images."""
    if tuple(x.shape[1:]) == (1, 8, 8):
        from ..rewards.classifier import digit_logreg

        w, b = digit_logreg()
        return x.reshape(x.shape[0], -1).clamp(-1, 1) @ w.T + b
    return x.reshape(x.shape[0], -1)


class AdaptEvaluator:
    """W2 and Frechet distance to held-out target samples per NFE, path length and straightness."""

    def __init__(self, heldout: Tensor, *, decode, shape, sigma: float, n: int, nfes: tuple[int, ...]) -> None:
        self.decode, self.sigma, self.nfes = decode, sigma, tuple(nfes)
        g = torch.Generator().manual_seed(2024)
        n = min(n, heldout.shape[0])
        self.heldout = heldout[torch.randperm(heldout.shape[0], generator=g)[:n]]
        self.x0 = torch.randn((n, *shape), generator=g)
        self.target_feats = target_features(self.heldout)

    def __call__(self, trainer: Trainer) -> dict[str, Any]:
        model = trainer.model.eval()
        out: dict[str, Any] = {}
        solver = "euler-maruyama" if self.sigma > 0 else "euler"
        for nfe in self.nfes:
            x = self.decode(integrate(model, self.x0, solver=solver, steps=nfe, sigma=self.sigma,
                                      generator=torch.Generator().manual_seed(7)).x)
            out[f"w2_nfe{nfe}"] = wasserstein2(x, self.heldout)
            out[f"fd_nfe{nfe}"] = frechet_distance(target_features(x), self.target_feats)
        if self.sigma == 0:
            out.update(path_metrics(model, self.x0))
        return out


def adapt(config: AdaptConfig, out: str | Path | None, *, progress: str = "auto", resume: bool = False) -> Run:
    """Fine-tune ``config.base`` toward the samples of ``config.target`` with GFT (or SFT)."""
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    base = load_run(config.base)
    sigma = base.sigma if config.sigma is None else float(config.sigma)
    if sigma != base.sigma:
        raise ConfigError(f"--sigma {sigma} differs from the base's sigma {base.sigma}; GFT blends drifts of one sigma")
    data = load_data(config.target, normalize="none")
    if data.train.shape != base.shape:
        raise DataError(f"target {config.target!r} has samples of shape {data.train.shape}, but the base model makes "
                        f"{base.shape}; adapt toward data of the base's shape")
    target = data.train.x
    if config.n_target is not None:
        if config.n_target > len(target):
            raise DataError(f"--n-target {config.n_target} exceeds the {len(target)} target samples available")
        target = target[torch.randperm(len(target), generator=torch.Generator().manual_seed(0))[: config.n_target]]
    elif len(target) < config.train.batch_size:
        raise DataError(f"the target has {len(target)} samples, fewer than --batch-size {config.train.batch_size}; "
                        "pass --n-target to use a small target set on purpose, or lower --batch-size")
    schedule = config.temperature()
    generator = seed_everything(config.train.seed)
    spec = base.config["model"]
    model = build_model(spec)
    model.load_state_dict(base.model.state_dict())
    objective = GFTObjective(base.normalizer.encode(target), pretrained=base.model.eval(), schedule=schedule,
                             sigma=sigma, coupling=config.coupling, batch_size=config.train.batch_size,
                             divide=config.divide)
    evaluator = AdaptEvaluator(data.heldout.x, decode=base.normalizer.decode, shape=base.shape, sigma=sigma,
                               n=config.eval_samples, nfes=config.eval_nfes)
    run_config = {
        "flowsteer_version": __version__, "method": "adapt", "adapt_method": config.method,
        "base": str(Path(config.base).resolve()), "model": spec, "data": base.config["data"],
        "target": {"spec": config.target, "n_used": int(len(target))}, "path": build_path(sigma).to_config(),
        "settings": {**asdict(config), "eval_nfes": list(config.eval_nfes)}, "seed": config.train.seed,
        "schedule_taus": schedule.stage_taus() if config.method == "gft" else [0.0],
    }
    out_dir = Path(out) if out is not None else None
    trainer = fit(model, objective, config.train, generator=generator, out=out_dir, run_config=run_config,
                  progress=progress, desc=f"adapt:{config.method}", resume=resume, evaluate=evaluator,
                  eval_every=config.eval_every)
    quality_key = f"w2_nfe{max(config.eval_nfes)}"
    run_config["final"] = {**trainer.last_eval, **stability(trainer.eval_history, quality_key), "steps": trainer.step}
    if out_dir is not None:
        from ..io import atomic_write_json
        from ..plots import save_metric_vs_nfe, save_metric_vs_step
        from ..runs import write_config

        write_config(out_dir, {**run_config, "steps_done": trainer.step})
        atomic_write_json(out_dir / "final_metrics.json", run_config["final"])
        label = f"{config.method} / {config.coupling}"
        save_metric_vs_step(trainer.eval_history, out_dir / "metrics_vs_step.png", title=label)
        first = trainer.eval_history[0] if trainer.eval_history and trainer.eval_history[0]["step"] == 0 else None
        save_metric_vs_nfe({**({"base (step 0)": first} if first else {}), label: trainer.last_eval},
                           out_dir / "metrics_vs_nfe.png", title=label)
    return Run(model=sampling_copy(trainer, spec, build_model), config={**run_config, "steps_done": trainer.step},
               path=out_dir)
