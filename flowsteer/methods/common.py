"""What every method shares around the Trainer: the run folder and resuming."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..progress import Progress
from ..runs import STATE_FILE, WEIGHTS_FILE, log_metrics, save_trainer_state, save_weights, write_config
from ..training import Objective, Trainer


class RunWriter:
    """Writes a run folder: weights, trainer state and config at each checkpoint; metrics as they come."""

    def __init__(self, out_dir: Path, run_config: dict[str, Any]) -> None:
        self.out_dir, self.run_config = out_dir, run_config
        out_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint(self, trainer: Trainer) -> None:
        save_weights(self.out_dir / WEIGHTS_FILE, trainer.sampling_state_dict())
        save_trainer_state(self.out_dir / STATE_FILE, trainer.state_dict())
        write_config(self.out_dir, {**self.run_config, "steps_done": trainer.step})

    def log(self, record: dict[str, Any]) -> None:
        log_metrics(self.out_dir, record)


def fit(
    model: nn.Module,
    objective: Objective,
    train: TrainConfig,
    *,
    generator: torch.Generator,
    out: Path | None,
    run_config: dict[str, Any],
    progress: str,
    desc: str,
    resume: bool = False,
    evaluate: Callable[[Trainer], dict[str, Any]] | None = None,
    eval_every: int = 0,
) -> Trainer:
    """Run the shared Trainer for one method, writing ``out`` as a run folder (None = in memory)."""
    writer = RunWriter(out, run_config) if out is not None else None
    bar = Progress(train.steps, mode=progress, desc=desc)
    trainer = Trainer(
        model, objective, train, generator=generator,
        checkpoint=writer.checkpoint if writer else None, log=writer.log if writer else None,
        progress=bar, evaluate=evaluate, eval_every=eval_every,
    )
    if resume and out is not None and (out / STATE_FILE).exists():
        trainer.load_state_dict(torch.load(out / STATE_FILE, weights_only=False))
        bar.message(f"resumed {out} at step {trainer.step}")
    trainer.fit()
    return trainer


def sampling_copy(trainer: Trainer, spec: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """A fresh network holding the trainer's sampling weights (EMA if enabled), in eval mode."""
    model = build(spec)
    model.load_state_dict(trainer.sampling_state_dict())
    return model.eval()
