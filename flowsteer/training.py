"""The one training loop every method shares.

A method supplies an :class:`Objective` (its loss and sampling policy); the
:class:`Trainer` owns everything else: Adam, linear warm-up, gradient-norm
clipping, an exponential moving average (EMA) of the weights, the seeded RNG,
logging to ``metrics.jsonl``, progress, and atomic checkpoints that resume
exactly (weights, EMA, optimiser, scheduler, RNG and the objective's state).

Per step ``k``::

    out = objective.loss(model, step=k, generator=g)     # StepOutput(loss, metrics)
    out.loss.backward(); clip_grad_norm_(max_norm); adam.step(); lr_schedule.step()
    ema <- ema + (1 - d_k) (theta - ema),   d_k = min(decay, (1 + k) / (10 + k))
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .config import TrainConfig
from .distributed import Distributed
from .errors import ConfigError, Interrupted, TrainingStopped
from .models.weights import load_trainable_state_dict, trainable_state_dict
from .progress import Progress


@dataclass
class StepOutput:
    """What an objective returns for one step.

    Attributes:
        loss: scalar tensor to minimise.
        metrics: extra scalars to log (tensors are averaged over the log interval).
    """

    loss: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


class Objective(Protocol):
    """A method's loss and sampling policy."""

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        ...


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Only the trained tensors are averaged (:func:`~flowsteer.models.lora.trainable_state_dict`: the
    adapters of a LoRA model, else every parameter and buffer).  The live tensors are captured once
    (``load_state_dict`` copies in place, so they stay the same objects); each update is one fused
    ``_foreach_lerp_``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        live = trainable_state_dict(model, keep_vars=True)
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        self._float_keys = [k for k, v in live.items() if v.is_floating_point()]
        self._other_keys = [k for k, v in live.items() if not v.is_floating_point()]
        self._live = live
        self._shadow_floats = [self.shadow[k] for k in self._float_keys]
        self._live_floats = [live[k] for k in self._float_keys]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._shadow_floats, self._live_floats, 1.0 - d)
        for k in self._other_keys:
            self.shadow[k].copy_(self._live[k])

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and python; return the run's own generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


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
        problems = config.validate()
        if problems:
            raise ConfigError.listing(problems)
        self.model, self.objective, self.config = model, objective, config
        self.generator = generator
        self.checkpoint_fn, self.log_fn, self.progress = checkpoint, log, progress
        self.evaluate_fn, self.eval_every = evaluate, eval_every
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step = -1
        self.eval_history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._stop_signal = 0
        cls = torch.optim.AdamW if config.weight_decay > 0 else torch.optim.Adam
        kwargs = {"weight_decay": config.weight_decay} if config.weight_decay > 0 else {}
        self.optimizer = cls([p for p in model.parameters() if p.requires_grad], lr=config.lr, **kwargs)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warm) if warm > 0 else 1.0
        )
        self.ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.dist = dist or Distributed()
        self.train_model = self.dist.wrap(model)
        self._rng_ranks: list[Any] | None = None
        self.ranks_in_sync: bool | None = None

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
            "skipped_steps": self.skipped_steps,
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
        if self.ema is not None and state.get("ema") is not None:
            for k, v in state["ema"].items():
                self.ema.shadow[k].copy_(v)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ConfigError(f"--resume: the checkpoint was written by {saved_world} process(es), this run has "
                              f"{self.dist.world_size}; resume with the same number of processes")
        set_rng_state(self.generator, state["rng_ranks"][self.dist.rank] if self.dist.enabled else state["rng"])
        self.eval_history = list(state.get("eval_history", []))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])

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
        with torch.no_grad():
            metrics = self.evaluate_fn(self)
        self.model.train(was_training)
        self.last_eval, self.last_eval_step = metrics, self.step
        self.eval_history = [h for h in self.eval_history if h["step"] != self.step] + [{"step": self.step, **metrics}]
        if self.log_fn is not None:
            self.log_fn({"step": self.step, "kind": "eval", **metrics})
        if self.progress is not None:
            shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
            self.progress.log(self.step, dict(list(shown.items())[:4]))
        return metrics

    def _step(self, params: list[Tensor]) -> tuple[StepOutput, Tensor | None, str | None]:
        """One guarded optimisation step: returns (output, grad norm, None) or (output, None, why it was skipped)."""
        cfg = self.config
        out = self.objective.loss(self.train_model, step=self.step, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(out.loss))
        if not self.dist.all_true(finite):  # every rank skips together, or the others would wait in backward
            return out, None, f"non-finite loss ({out.loss.item()})" if not finite else "non-finite loss on another rank"
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return out, None, f"non-finite gradient (norm {grad_norm.item()})"
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return out, grad_norm, None

    def _checkpoint(self) -> None:
        """Save through ``checkpoint_fn`` on rank 0, with every rank's RNG state; all ranks wait for it."""
        if self.dist.enabled:
            self._rng_ranks = self.dist.gather_object(rng_state(self.generator))
        if self.checkpoint_fn is not None and self.dist.is_main:
            self.checkpoint_fn(self)
        self.dist.barrier()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signum

    def fit(self) -> TrainResult:
        """Train to ``config.steps``.

        A step whose loss or gradient is not finite is skipped (no update), counted in
        ``skipped_steps`` and logged (``kind = "skip"``); ``config.max_bad_steps`` of them in a row
        raise :class:`TrainingStopped`, leaving the last checkpoint as it was.  SIGINT / SIGTERM
        (in the main thread) finish the current step, save a checkpoint and raise :class:`Interrupted`.
        """
        import signal
        import threading

        cfg = self.config
        self.model.train()
        start = time.perf_counter()
        sums: dict[str, Tensor] = {}
        count = 0
        last_loss = float("nan")
        bad_in_row = 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._stop_signal = 0
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            if self.step == 0 and self.evaluate_fn is not None:
                self.run_evaluation()
            while self.step < cfg.steps:
                out, grad_norm, skipped = self._step(params)
                if skipped is not None:
                    bad_in_row += 1
                    self.skipped_steps += 1
                    if self.log_fn is not None:
                        self.log_fn({"step": self.step, "kind": "skip", "reason": skipped, "in_a_row": bad_in_row})
                    if self.progress is not None:
                        self.progress.message(f"step {self.step}: skipped ({skipped}); {bad_in_row} in a row")
                    if bad_in_row >= cfg.max_bad_steps:
                        raise TrainingStopped(
                            f"stopped at step {self.step}: {bad_in_row} non-finite steps in a row ({skipped}); the last "
                            "checkpoint is kept - lower --lr, check the data or reward for extreme values, or raise "
                            "--max-bad-steps")
                else:
                    bad_in_row = 0
                    for key, value in (("loss", out.loss.detach()), ("grad_norm", grad_norm.detach()), *out.metrics.items()):
                        v = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
                        sums[key] = sums[key] + v if key in sums else v.clone()
                    count += 1
                self.step += 1
                if self.progress is not None:
                    self.progress.step()
                if (self.step % cfg.log_every == 0 or self.step == cfg.steps) and count:
                    record = {k: float(v) / count for k, v in sums.items()}
                    last_loss = record["loss"]
                    record = {"step": self.step, "kind": "train", **record, "lr": self.scheduler.get_last_lr()[0],
                              "elapsed_s": round(time.perf_counter() - start, 3)}
                    if self.log_fn is not None:
                        self.log_fn(record)
                    if self.progress is not None:
                        self.progress.log(self.step, {"loss": record["loss"]})
                    sums, count = {}, 0
                if self.eval_every and self.step % self.eval_every == 0 and self.step < cfg.steps:
                    self.run_evaluation()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
                if self._stop_signal:
                    self._interrupt()
            if self.evaluate_fn is not None and self.last_eval_step != self.step:
                self.run_evaluation()
            self._checkpoint()
            if self.dist.enabled:
                self.ranks_in_sync = len(set(self.dist.gather_object(weights_digest(self.model)))) == 1
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.progress is not None:
                self.progress.close()
        return TrainResult(steps=self.step, final_loss=last_loss, seconds=time.perf_counter() - start,
                           skipped_steps=self.skipped_steps)

    def _interrupt(self) -> None:
        import signal

        name = signal.Signals(self._stop_signal).name
        saved = ""
        if self.checkpoint_fn is not None or self.dist.enabled:
            self._checkpoint()
            saved = f"; saved a checkpoint at step {self.step} - run the same command with --resume to continue"
        raise Interrupted(f"interrupted by {name} at step {self.step}{saved}", signum=self._stop_signal)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the trained tensors' bytes: equal on every rank when gradients were synchronised."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(trainable_state_dict(model).items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def config_dict(config: Any) -> dict[str, Any]:
    return asdict(config)
