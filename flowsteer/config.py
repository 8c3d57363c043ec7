"""Settings and option names shared by the library and the CLI (no torch import here).

Keeping these light lets ``flowsteer --help`` answer without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOLVERS = ("euler", "heun", "midpoint", "euler-maruyama", "dopri5")
COUPLINGS = ("independent", "ot", "sinkhorn")
MODEL_KINDS = ("mlp", "unet")
TOYS = ("moons", "8gaussians", "checkerboard", "circles", "swissroll")
TIME_SAMPLERS = ("uniform", "logit-normal")
ALIGN_METHODS = ("orw-w2", "orw", "rwr", "raft")
SCHEDULES = ("geometric", "linear", "cosine")
LOGGERS = ("jsonl", "tensorboard")
# The documented default alpha: on the even-digits task it keeps P(even) >= 0.95 with class entropy
# >= 1.45 nats (docs/results.md); alpha = 0 collapses, alpha = 1 barely moves the reward.
ALIGN_DEFAULT_ALPHA = 0.15
ALIGN_DEFAULT_TAU = 5.0


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method.

    Attributes:
        steps: gradient steps in the run.
        batch_size: samples per step.
        lr: Adam learning rate after warm-up.
        warmup_steps: linear warm-up of the learning rate from 0 (0 = none).
        grad_clip: max global gradient norm (0 = no clipping).
        ema_decay: EMA decay of the weights used for sampling (0 = no EMA).
        weight_decay: Adam(W) weight decay.
        seed: seeds the model init and every random draw of the run.
        log_every: steps between ``metrics.jsonl`` records and log lines.
        checkpoint_every: steps between checkpoints (0 = only at the end).
        keep_last: checkpoint folders to keep (older ones are deleted; the newest is never deleted).
        max_bad_steps: consecutive non-finite steps (loss or gradient) that stop the run; each one
            is skipped (no update), counted and logged.
        log: ``jsonl`` (``metrics.jsonl`` only) or ``tensorboard`` (also TensorBoard event files in the run's
            ``tensorboard/`` folder; extra: tensorboard).
    """

    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 0
    keep_last: int = 2
    max_bad_steps: int = 5
    log: str = "jsonl"

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"--steps must be an integer >= 1 (got {self.steps!r})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"--batch-size must be an integer >= 1 (got {self.batch_size!r})")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"--lr must be a finite number > 0 (got {self.lr!r})")
        if self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be >= 0 (got {self.warmup_steps})")
        if self.grad_clip < 0:
            problems.append(f"--grad-clip must be >= 0 (got {self.grad_clip})")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"--ema-decay must be in [0, 1) (got {self.ema_decay})")
        if self.log_every < 1:
            problems.append(f"--log-every must be >= 1 (got {self.log_every})")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0 (got {self.checkpoint_every})")
        if self.keep_last < 1:
            problems.append(f"--keep-last must be >= 1 (got {self.keep_last})")
        if self.max_bad_steps < 1:
            problems.append(f"--max-bad-steps must be >= 1 (got {self.max_bad_steps})")
        if self.log not in LOGGERS:
            problems.append(f"--log must be one of {', '.join(LOGGERS)} (got {self.log!r})")
        return problems


def align_train_defaults() -> TrainConfig:
    """Optimisation defaults of fine-tuning: short warm-up, no EMA (runs are short), 1500 steps."""
    return TrainConfig(steps=1500, batch_size=256, lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.0,
                       log_every=50)


def adapt_train_defaults() -> TrainConfig:
    """Optimisation defaults of GFT / SFT: 2000 steps, short warm-up, no EMA."""
    return TrainConfig(steps=2000, batch_size=256, lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.0,
                       log_every=100)
