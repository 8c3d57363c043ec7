"""What every method shares around the Trainer: the run folder and resuming."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..progress import Progress
from ..errors import ConfigError
from ..runs import (METRICS_FILE, WEIGHTS_FILE, load_trainer_state, log_metrics, resolve_checkpoint, save_checkpoint,
                    save_weights, write_config)
from ..distributed import Distributed
from ..training import Objective, Trainer


class RunWriter:
    """Writes a run folder: a ``checkpoint-STEP/`` folder (and the sampling weights and config at the
    root) at each checkpoint; metrics as they come."""

    def __init__(self, out_dir: Path, run_config: dict[str, Any], *, keep_last: int = 2, tensorboard: bool = False) -> None:
        self.out_dir, self.run_config, self.keep_last = out_dir, run_config, keep_last
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self._board: Any = None

    def open_board(self, start_step: int = 0) -> None:
        """Start the TensorBoard writer; on resume, events after ``start_step`` (from the dead run) are purged."""
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs the tensorboard package; install it with pip install "
                              "'flowsteer[tensorboard]' or drop --log tensorboard") from None
        self._board = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_step or None)

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None

    def checkpoint(self, trainer: Trainer) -> None:
        weights = trainer.sampling_state_dict()
        save_checkpoint(self.out_dir, trainer.step, weights, trainer.state_dict(), keep_last=self.keep_last)
        save_weights(self.out_dir / WEIGHTS_FILE, weights)
        write_config(self.out_dir, {**self.run_config, "steps_done": trainer.step})

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after ``step`` (by a run that died after its last checkpoint)."""
        import json

        from ..io import atomic_write_text

        path = self.out_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))

    def log(self, record: dict[str, Any]) -> None:
        log_metrics(self.out_dir, record)
        if self._board is not None:
            kind, step = record.get("kind", "train"), int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._board.add_scalar(f"{kind}/{key}", value, step)
            self._board.flush()


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
    resume: bool | str = False,
    evaluate: Callable[[Trainer], dict[str, Any]] | None = None,
    eval_every: int = 0,
    dist: Distributed | None = None,
) -> Trainer:
    """Run the shared Trainer for one method, writing ``out`` as a run folder (None = in memory).

    ``resume``: False, True / ``"auto"`` (the latest checkpoint) or a checkpoint folder name.
    ``dist``: with several processes every rank reads the checkpoint it resumes from, and rank 0 alone
    writes the run folder and shows progress.
    """
    if dist is None:
        from ..distributed import world_size_from_env

        if world_size_from_env() > 1:
            raise ConfigError(f"{desc} runs in one process; multi-process training (accelerate launch) is supported "
                              "for align - launch this command without accelerate")
        dist = Distributed()
    checkpoint = None
    if resume and out is not None:
        checkpoint = resolve_checkpoint(out, "auto" if resume is True else str(resume)) if out.is_dir() else None
        if checkpoint is None:
            raise ConfigError(f"--resume: {str(out)!r} has no checkpoint to resume from; drop --resume to start "
                              "the run again (pass --checkpoint-every N to checkpoint during training)")
    if train.log == "tensorboard" and out is None:
        raise ConfigError("--log tensorboard writes into the run folder; give --out")
    writer = RunWriter(out, run_config, keep_last=train.keep_last, tensorboard=train.log == "tensorboard") \
        if out is not None and dist.is_main else None
    bar = Progress(train.steps, mode=progress if dist.is_main else "quiet", desc=desc)
    trainer = Trainer(
        model, objective, train, generator=generator,
        checkpoint=writer.checkpoint if writer else None, log=writer.log if writer else None,
        progress=bar, evaluate=evaluate, eval_every=eval_every, dist=dist,
    )
    if checkpoint is not None:
        trainer.load_state_dict(load_trainer_state(checkpoint))
        if writer is not None:
            writer.truncate_metrics(trainer.step)
        bar.message(f"resumed {out} at step {trainer.step} from {checkpoint.name}")
    if writer is not None:
        writer.open_board(trainer.step)
    try:
        trainer.fit()
    finally:
        if writer is not None:
            writer.close()
    return trainer


def sampling_copy(trainer: Trainer, spec: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """A fresh network holding the trainer's sampling weights (EMA if enabled), in eval mode."""
    model = build(spec)
    model.load_state_dict(trainer.sampling_state_dict())
    return model.eval()
