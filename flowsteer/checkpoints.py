"""Checkpoints and the writer of a run folder while it trains.

``checkpoint-STEP/`` holds ``model.safetensors`` (the sampling weights) and ``trainer_state.pt`` (raw
weights, optimiser, scheduler, EMA, every RNG state, the step and the method's own state).  A folder is
assembled under a temporary name and renamed into place; ``latest`` moves only after that, and the
newest ``keep_last`` folders are kept.  File names come from :mod:`flowsteer.runs`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, RunFolderError
from .io import atomic_path, atomic_write_text, disk_errors, folder_mode
from .training import Trainer
from .runs import (CHECKPOINT_PREFIX, LATEST_FILE, METRICS_FILE, STATE_FILE, TENSORBOARD_DIR, WEIGHTS_FILE,
                   log_metrics, save_weights, write_config)


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _checkpoint_step(path: Path) -> int | None:
    tail = path.name[len(CHECKPOINT_PREFIX):]
    return int(tail) if path.name.startswith(CHECKPOINT_PREFIX) and tail.isdigit() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and _checkpoint_step(p) is not None]
    return sorted(found, key=_checkpoint_step)


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, Tensor], state: dict[str, Any], *,
                    keep_last: int) -> Path:
    """Write ``run_dir/checkpoint-STEP/`` atomically, point ``latest`` at it, prune to ``keep_last``."""
    name = f"{CHECKPOINT_PREFIX}{step}"
    with disk_errors(run_dir):
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir))
    try:
        save_weights(tmp / WEIGHTS_FILE, weights)
        save_trainer_state(tmp / STATE_FILE, state)
        final = run_dir / name
        with disk_errors(final):
            tmp.chmod(folder_mode())  # mkdtemp makes 0700; a checkpoint folder is a folder like any other
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(run_dir / LATEST_FILE, name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(run_dir: Path, which: str = "auto") -> Path | None:
    """The checkpoint folder to resume from: ``latest`` (``auto``) or a named ``checkpoint-STEP``.

    None when the run has no checkpoint yet.  A ``latest`` naming a missing folder falls back to
    the newest complete one (a crash between the rename and the pointer update).
    """
    if which not in ("auto", "latest"):
        path = run_dir / which
        if _checkpoint_step(path) is None or not path.is_dir():
            names = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
            raise RunFolderError(f"--resume {which!r}: no such checkpoint in {str(run_dir)!r} (found: {names}); "
                                 "pass --resume alone for the latest")
        return path
    pointer = run_dir / LATEST_FILE
    if pointer.is_file():
        path = run_dir / pointer.read_text(encoding="utf-8").strip()
        if path.is_dir() and _checkpoint_step(path) is not None:
            return path
    found = list_checkpoints(run_dir)
    if found:
        return found[-1]
    legacy = run_dir / STATE_FILE  # runs written before checkpoint folders kept the state at the root
    return run_dir if legacy.is_file() else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` of a checkpoint folder, with a one-line error if it is damaged."""
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("not a trainer state")
        return state
    except Exception as exc:
        raise RunFolderError(
            f"{path}: cannot read the checkpoint ({type(exc).__name__}); it is damaged - delete {checkpoint.name} "
            "and resume from an older one (--resume checkpoint-STEP), or start the run again") from None



class RunWriter:
    """Writes a run folder: a ``checkpoint-STEP/`` folder (and the sampling weights and config at the
    root) at each checkpoint; metrics as they come."""

    def __init__(self, out_dir: Path, run_config: dict[str, Any], *, keep_last: int = 2, tensorboard: bool = False) -> None:
        self.out_dir, self.run_config, self.keep_last = out_dir, run_config, keep_last
        with disk_errors(out_dir):
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
        self._board = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=start_step or None)

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
