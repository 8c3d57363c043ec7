"""The one training loop every method shares.

A method supplies an :class:`Objective` (its loss and sampling policy); the
:class:`Trainer` owns everything else: Adam, linear warm-up (then ``--lr-schedule``), gradient-norm
clipping, an exponential moving average (EMA) of the weights, the seeded RNG,
logging to ``metrics.jsonl``, progress, and atomic checkpoints that resume
exactly (weights, EMA, optimiser, scheduler, RNG and the objective's state).

Per step ``k``, all on the run's device and without a host synchronisation::

    out = objective.loss(model, step=k, generator=g)     # StepOutput(loss, metrics), autocast for bf16/fp16
    out.loss.backward(); n = clip_grad_norm_(max_norm); ok = isfinite(loss) & isfinite(n)
    adam.step(found_inf = not ok)                        # fused Adam skips the update on the device
    lr_schedule.step(); ema <- ema + (1 - d_k) ok (theta - ema),   d_k = min(decay, (1 + k) / (10 + k))

The step's flags and metric sums stay on the device; they are read (one synchronisation) at log,
evaluation and checkpoint steps, and after every step on the CPU, where reading is free.  A skipped step
is then logged, and ``max_bad_steps`` of them in a row stop the run (:class:`TrainingStopped`, exit 3).  A
finite loss that blows up (over 10^4 times its first value) counts as a bad step too (:mod:`flowsteer.step_checks`).

Signals (:mod:`flowsteer.interrupts`): SIGINT / SIGTERM finish the step, checkpoint and stop (exit 128 +
signal); during an objective's interruptible region (ORW's rollouts and reward calls) or an evaluation, the
step is cut short and the checkpoint holds the last completed step.  A second signal exits at once.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .devices import autocast, configure_matmul, precision_problems
from .distributed import Distributed, mean_across_ranks
from .errors import ConfigError, Interrupted
from .interrupts import StepInterrupted, StopSignals
from .models import enable_gradient_checkpointing
from .models.weights import load_trainable_state_dict, trainable_state_dict
from .progress import Progress
from .step_checks import StepChecks
from .train_state import EMA, lr_factor, rng_state, seed_everything, set_base_lr, set_rng_state, weights_digest

__all__ = ["EMA", "Objective", "StepOutput", "TrainResult", "Trainer", "seed_everything"]


@dataclass
class StepOutput:
    """What an objective returns for one step.

    Attributes:
        loss: scalar tensor to minimise.
        metrics: extra scalars to log (tensors are averaged over the log interval).
        monitor: the scalar the divergence check watches instead of ``loss`` (None = the loss): for a loss
            whose scale moves legitimately (e.g. with raw reward weights), the same loss with that scale taken out.
    """

    loss: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    monitor: Tensor | None = None


class Objective(Protocol):
    """A method's loss and sampling policy.

    An objective whose ``loss`` marks :func:`~flowsteer.interrupts.interruptible` regions sets the class
    attribute ``interruptible = True``: a stop signal inside one abandons the step, and the Trainer rewinds the
    RNG to the step's start (its regions must change nothing else).
    """

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        ...


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    skipped_steps: int = 0


class Trainer:
    """Runs an :class:`Objective` for ``config.steps`` steps.

    Args:
        model: the network being trained (``model(t, x, **cond)``).
        objective: the method's loss.
        config: :class:`TrainConfig`.
        generator: the run's RNG (see :func:`seed_everything`).
        checkpoint: called as ``checkpoint(trainer)`` to save state (every
            ``checkpoint_every`` steps and at the end); None = no saving.
        log: called with each metrics record (a dict with ``step`` and ``kind``).
        progress: a :class:`Progress` (None = quiet).
        evaluate: called as ``evaluate(trainer)`` before the first step, every
            ``eval_every`` steps and at the end; returns a dict of metrics that
            is logged with ``kind = "eval"``.
        eval_every: steps between evaluations (0 = only before and after).
        dist: the process group (:mod:`flowsteer.distributed`); with several ranks the model is trained
            through DistributedDataParallel, and evaluation and checkpoint writing run on rank 0 only
            (the other ranks wait at a barrier).  ``self.model`` is always the unwrapped network.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: TrainConfig,
        *,
        generator: torch.Generator,
        checkpoint: Callable[["Trainer"], None] | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
        progress: Progress | None = None,
        evaluate: Callable[["Trainer"], dict[str, Any]] | None = None,
        eval_every: int = 0,
        dist: Distributed | None = None,
    ) -> None:
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        problems = config.validate() + precision_problems(self.device, config.precision, compile=config.compile)
        if problems:
            raise ConfigError.listing(problems)
        self.model, self.objective, self.config = model, objective, config
        self.generator = generator
        configure_matmul(self.device, config.precision)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.checkpoint_fn, self.log_fn, self.progress = checkpoint, log, progress
        self.evaluate_fn, self.eval_every = evaluate, eval_every
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step = -1
        self.eval_history: list[dict[str, Any]] = []
        self._stop_signal = 0
        self._stops = StopSignals()  # installed while fit runs
        self._last_checkpoint_step = -1
        cls = torch.optim.AdamW if config.weight_decay > 0 else torch.optim.Adam
        kwargs = {"weight_decay": config.weight_decay} if config.weight_decay > 0 else {}
        params = [p for p in model.parameters() if p.requires_grad]
        # fused Adam takes the skip flag as a device tensor (found_inf): a skipped step needs no host sync
        fused = self.device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)
        self.optimizer = cls(params, lr=config.lr, fused=fused or None, **kwargs)
        self._fused = fused
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: lr_factor(k, warmup=config.warmup_steps, steps=config.steps,
                                                schedule=config.lr_schedule)
        )
        self.ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.dist = dist or Distributed()
        self.train_model = self.dist.wrap(model)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        self.checks = StepChecks(config.max_bad_steps, scaled=self.scaler is not None)
        self._rng_ranks: list[Any] | None = None
        self.ranks_in_sync: bool | None = None

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient so far."""
        return self.checks.skipped

    # ----------------------------------------------------------------- state

    def sampling_state_dict(self) -> dict[str, Tensor]:
        """Weights used for sampling (the EMA if enabled, else the raw weights); a LoRA model's adapters only."""
        return self.ema.state_dict() if self.ema is not None else trainable_state_dict(self.model)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": trainable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(self.generator),
            "eval_history": list(self.eval_history),
            **self.checks.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        if self.dist.enabled:
            state["world_size"] = self.dist.world_size
            state["rng_ranks"] = self._rng_ranks or self.dist.gather_object(rng_state(self.generator))
        objective_state = getattr(self.objective, "state_dict", None)
        if callable(objective_state):
            state["objective"] = objective_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        load_trainable_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._follow_config_lr()
        if self.ema is not None and state.get("ema") is not None:
            for k, v in state["ema"].items():
                self.ema.shadow[k].copy_(v)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ConfigError(f"--resume: the checkpoint was written by {saved_world} process(es), this run has "
                              f"{self.dist.world_size}; resume with the same number of processes")
        set_rng_state(self.generator, state["rng_ranks"][self.dist.rank] if self.dist.enabled else state["rng"])
        self.eval_history = list(state.get("eval_history", []))
        self.checks.load_state_dict(state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])

    def _follow_config_lr(self) -> None:
        """After loading a checkpoint: this run's --lr (a resume may change it), not the checkpoint's."""
        set_base_lr(self.optimizer, self.scheduler, self.config.lr)

    # ----------------------------------------------------------------- loop

    def run_evaluation(self) -> dict[str, Any]:
        """Evaluate now (model in eval mode, no gradients), log and return the metrics (rank 0 only)."""
        if self.evaluate_fn is None:
            return {}
        if not self.dist.is_main:
            self.last_eval_step = self.step
            self.dist.barrier()
            return {}
        try:
            return self._evaluate()
        finally:
            self.dist.barrier()

    def _evaluate(self) -> dict[str, Any]:
        assert self.evaluate_fn is not None
        was_training = self.model.training
        self.model.eval()
        self._stops.armed = not self.dist.enabled  # a stop signal may cut an evaluation's sampling and rewards short
        try:
            with torch.no_grad():
                metrics = self.evaluate_fn(self)
        finally:
            self._stops.armed = False
            self.model.train(was_training)
        self.last_eval, self.last_eval_step = metrics, self.step
        self.eval_history = [h for h in self.eval_history if h["step"] != self.step] + [{"step": self.step, **metrics}]
        if self.log_fn is not None:
            self.log_fn({"step": self.step, "kind": "eval", **metrics})
        if self.progress is not None:
            shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
            self.progress.log(self.step, dict(list(shown.items())[:4]))
        return metrics

    def _step(self, params: list[Tensor]) -> tuple[StepOutput, Tensor, Tensor]:
        """One optimisation step on the device: returns (output, grad norm, ok), ``ok`` a 0-d bool tensor.

        No host synchronisation: a non-finite loss or gradient reaches the fused optimiser as its
        ``found_inf`` flag, which skips the update; the EMA is weighted by ``ok``.  Under several processes
        every rank sees the same averaged (non-finite) gradient, so they all skip together.
        """
        cfg = self.config
        with autocast(self.device, cfg.precision):
            out = self.objective.loss(self.train_model, step=self.step, generator=self.generator)
        loss = out.loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        loss_ok = torch.isfinite(loss.detach())
        # under fp16 an overflowing gradient is the scaler's business (it skips and lowers the scale): such a
        # step is not applied (nor averaged into the EMA) but is not counted as a bad step either
        ok = loss_ok & torch.isfinite(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._fused:
            self.optimizer.found_inf = (~ok).float()  # type: ignore[attr-defined]
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif bool(ok):  # an optimiser without fused kernels (e.g. on MPS): this one check syncs
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step, ok)
        monitor = (loss if out.monitor is None else out.monitor).detach().float()
        # every rank must reach the same verdict on divergence: the monitor is averaged over ranks (on the device)
        self.checks.add(self.step, loss, grad_norm, mean_across_ranks(monitor) if self.dist.enabled else monitor)
        return out, grad_norm, ok

    def _settle(self) -> None:
        """Read the pending steps' flags on the host (one sync); see :mod:`flowsteer.step_checks`."""
        self.checks.settle(self.log_fn, self.progress)

    def _checkpoint(self) -> None:
        """Save through ``checkpoint_fn`` on rank 0, with every rank's RNG state; all ranks wait for it."""
        self._settle()
        if self.dist.enabled:
            self._rng_ranks = self.dist.gather_object(rng_state(self.generator))
        if self.checkpoint_fn is not None and self.dist.is_main:
            self.checkpoint_fn(self)
        self._last_checkpoint_step = self.step
        self.dist.barrier()

    def fit(self) -> TrainResult:
        """Train to ``config.steps``.

        A step whose loss or gradient is not finite is skipped (no update), counted in
        ``skipped_steps`` and logged (``kind = "skip"``); ``config.max_bad_steps`` of them in a row
        raise :class:`TrainingStopped`, leaving the last checkpoint as it was (so do diverged steps: see the
        module doc).  SIGINT / SIGTERM (in the main thread) save a checkpoint of the last completed step and
        raise :class:`Interrupted`; a second one raises :class:`~flowsteer.interrupts.Abort` (see the module doc).
        """
        cfg = self.config
        self.model.train()
        start = time.perf_counter()
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), device=self.device)
        last_loss = float("nan")
        params = [p for p in self.model.parameters() if p.requires_grad]
        read_every_step = self.device.type == "cpu"
        self._stop_signal = 0
        self._stops = StopSignals()
        self._stops.install()
        # ORW's rollouts and reward calls may be cut short: the step's RNG state is kept to rewind to
        rewind = bool(getattr(self.objective, "interruptible", False)) and not self.dist.enabled
        snapshot = None
        try:
            if self.evaluate_fn is not None and self._evaluation_due():  # step 0, or one a stop cut short
                self.run_evaluation()
            while self.step < cfg.steps:
                snapshot = rng_state(self.generator) if rewind else None
                self._stops.armed = rewind
                out, grad_norm, ok = self._step(params)
                self._stops.armed, snapshot = False, None
                for key, value in (("loss", out.loss), ("grad_norm", grad_norm), *out.metrics.items()):
                    v = value.detach().float() if isinstance(value, Tensor) else \
                        torch.full((), float(value), device=self.device)  # a fill kernel, no host-to-device copy
                    v = torch.where(ok, v, torch.zeros_like(v))
                    sums[key] = sums[key] + v if key in sums else v
                count = count + ok
                self.step += 1
                if self.progress is not None:
                    self.progress.step()
                logging = self.step % cfg.log_every == 0 or self.step == cfg.steps
                if read_every_step or logging:
                    self._settle()
                if logging and sums:
                    n = float(count)
                    if n:
                        record = {k: float(v) / n for k, v in sums.items()}
                        last_loss = record["loss"]
                        record = {"step": self.step, "kind": "train", **record,
                                  "lr": self.scheduler.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - start, 3)}
                        if self.log_fn is not None:
                            self.log_fn(record)
                        if self.progress is not None:
                            self.progress.log(self.step, {"loss": record["loss"]})
                    sums, count = {}, torch.zeros((), device=self.device)
                if self.eval_every and self.step % self.eval_every == 0 and self.step < cfg.steps:
                    self._settle()
                    self.run_evaluation()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
                if self._stops.received:
                    self._interrupt(self._stops.received)
            self._settle()
            if self.evaluate_fn is not None and self.last_eval_step != self.step:
                self.run_evaluation()
            self._checkpoint()
            if self.dist.enabled:
                self.ranks_in_sync = len(set(self.dist.gather_object(weights_digest(self.model)))) == 1
        except StepInterrupted as stop:  # cut short inside a step (rewound to its start) or an evaluation
            self._stops.armed = False
            if snapshot is not None:
                set_rng_state(self.generator, snapshot)
            self._interrupt(stop.signum)
        finally:
            self._stops.uninstall()
            if self.progress is not None:
                self.progress.close()
        return TrainResult(steps=self.step, final_loss=last_loss, seconds=time.perf_counter() - start,
                           skipped_steps=self.skipped_steps)

    def _evaluation_due(self) -> bool:
        """At the start of ``fit``: step 0, or a resumed step whose evaluation a stop signal cut short."""
        due = self.step == 0 or (self.eval_every and self.step % self.eval_every == 0 and self.step < self.config.steps)
        return bool(due) and all(h.get("step") != self.step for h in self.eval_history)

    def _interrupt(self, signum: int) -> None:
        """Checkpoint the last completed step (unless that is done) and raise :class:`Interrupted`."""
        self._stop_signal = signum
        name = signal.Signals(signum).name
        saved = ""
        if self.checkpoint_fn is not None or self.dist.enabled:
            if self._last_checkpoint_step != self.step:
                self._checkpoint()
            saved = f"; saved a checkpoint at step {self.step} - run the same command with --resume to continue"
        raise Interrupted(f"interrupted by {name} at step {self.step}{saved}", signum=self._stop_signal)

