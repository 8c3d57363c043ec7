"""Settings: the one place where every option, its default and its help text live (no torch import here).

Each command's settings are a dataclass whose fields carry their help in ``field(metadata=...)``
(:func:`option`); the command line is generated from them (:mod:`flowsteer.cli`), in the way TRL's
``HfArgumentParser`` works, so a default is written once.  ``validate() -> list[str]`` returns every
problem found, each naming the option and the fix; callers raise them once (:meth:`ConfigError.listing`).
The methods' own settings (pretrain, align, adapt) are in :mod:`flowsteer.methods.configs`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

SOLVERS = ("euler", "heun", "midpoint", "euler-maruyama", "dopri5")
COUPLINGS = ("independent", "ot", "sinkhorn")
MODEL_KINDS = ("mlp", "unet")
TOYS = ("moons", "8gaussians", "checkerboard", "circles", "swissroll")
TIME_SAMPLERS = ("uniform", "logit-normal")
ALIGN_METHODS = ("orw-w2", "orw", "rwr", "raft", "flow-grpo", "nft")
ADAPT_METHODS = ("gft", "sft")
SCHEDULES = ("geometric", "linear", "cosine")
LOGGERS = ("jsonl", "tensorboard")
PRECISIONS = ("fp32", "bf16", "fp16", "fp32-strict")
EXPORT_FORMATS = ("diffusers", "peft")
# The documented default alpha: on the even-digits task it keeps P(even) >= 0.95 with class entropy
# >= 1.45 nats (docs/results.md); alpha = 0 collapses, alpha = 1 barely moves the reward.
ALIGN_DEFAULT_ALPHA = 0.15
ALIGN_DEFAULT_TAU = 5.0
DEVICE_HELP = "where to compute: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps"


def option(default: Any = MISSING, *, help: str, factory: Any = MISSING, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, required: bool = False, flag: str | None = None, listed: bool = False,
           nargs: str | None = None, const: Any = None, positional: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        help: the option's help text (the default is appended by the parser).
        choices: the allowed values.  metavar: the value's name in ``--help``.
        required: the command needs a value (the field's default is empty).
        flag: the option's name when it is not ``--field-name`` (``--no-divide`` negates a True boolean).
        listed: a comma-separated list on the command line (``--alpha 0,0.1`` runs a sweep; ``--nfe 1,4``).
        nargs, const: as argparse's (``--resume`` alone means ``auto``).  positional: an argument, not an option.
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "required": required, "flag": flag,
            "listed": listed, "nargs": nargs, "const": const, "positional": positional}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_choice(problems: list[str], name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        problems.append(f"--{name} must be one of {', '.join(choices)} (got {value!r})")


@dataclass
class TrainConfig:
    """Optimisation and execution settings shared by every training method (see the field help)."""

    steps: int = option(4000, help="gradient steps")
    batch_size: int = option(256, help="samples per step (across all processes)")
    lr: float = option(1e-3, help="Adam learning rate after warm-up")
    warmup_steps: int = option(200, help="linear learning-rate warm-up steps")
    grad_clip: float = option(1.0, help="max global gradient norm, 0 = off")
    ema_decay: float = option(0.999, help="EMA decay of the saved sampling weights, 0 = off")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    seed: int = option(0, help="seeds the model init and every random draw")
    log_every: int = option(100, help="steps between metrics.jsonl records")
    checkpoint_every: int = option(0, help="steps between checkpoint-STEP/ folders; 0 = only at the end")
    keep_last: int = option(2, help="checkpoint folders to keep (the newest is never deleted)")
    max_bad_steps: int = option(5, help="non-finite steps in a row (each skipped) that stop the run")
    log: str = option("jsonl", choices=LOGGERS,
                      help="jsonl: metrics.jsonl only; tensorboard: also TensorBoard events in OUT/tensorboard "
                           "(extra: tensorboard)")
    device: str = option("auto", help=DEVICE_HELP)
    precision: str = option("fp32", choices=PRECISIONS,
                            help="fp32 (TF32 matmuls allowed on Ampere and newer), bf16 or fp16 autocast of the "
                                 "forward passes (fp32 master weights, optimiser and EMA; fp16 adds a gradient "
                                 "scaler), or fp32-strict (no TF32)")
    compile: bool = option(False, help="torch.compile the velocity network")
    gradient_checkpointing: bool = option(False, help="recompute activations in backward to save memory "
                                                      "(diffusers models)")


    def validate(self) -> list[str]:
        p: list[str] = []
        for name in ("steps", "batch_size", "log_every", "keep_last", "max_bad_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                p.append(f"--{name.replace('_', '-')} must be an integer >= 1 (got {value!r})")
        for name in ("warmup_steps", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                p.append(f"--{name.replace('_', '-')} must be an integer >= 0 (got {value!r})")
        if not (finite(self.lr) and self.lr > 0):
            p.append(f"--lr must be a finite number > 0 (got {self.lr!r})")
        if not (finite(self.grad_clip) and self.grad_clip >= 0):
            p.append(f"--grad-clip must be a finite number >= 0 (got {self.grad_clip!r})")
        if not (finite(self.weight_decay) and self.weight_decay >= 0):
            p.append(f"--weight-decay must be a finite number >= 0 (got {self.weight_decay!r})")
        if not (finite(self.ema_decay) and 0 <= self.ema_decay < 1):
            p.append(f"--ema-decay must be in [0, 1) (got {self.ema_decay!r})")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            p.append(f"--seed must be an integer in [0, 2^63) (got {self.seed!r})")
        check_choice(p, "log", self.log, LOGGERS)
        check_choice(p, "precision", self.precision, PRECISIONS)
        return p


def align_train_defaults() -> TrainConfig:
    """Optimisation defaults of fine-tuning: short warm-up, no EMA (runs are short), 1500 steps."""
    return TrainConfig(steps=1500, batch_size=256, lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.0,
                       log_every=50)


def adapt_train_defaults() -> TrainConfig:
    """Optimisation defaults of GFT / SFT: 2000 steps, short warm-up, no EMA."""
    return TrainConfig(steps=2000, batch_size=256, lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.0,
                       log_every=100)


@dataclass
class RunOutput:
    """Where a training command writes, and whether it continues a run there."""

    out: str = option("", required=True, metavar="DIR", help="run folder to write")
    resume: str | None = option(None, nargs="?", const="auto", metavar="auto|checkpoint-STEP",
                                help="continue the run in --out from its latest checkpoint (or the one named)")


@dataclass
class Display:
    """How a command shows its progress."""

    progress: str = option("auto", choices=("auto", "bar", "log"),
                           help="progress display: a bar on a terminal, log lines otherwise")
    quiet: bool = option(False, help="print nothing but errors")
    config: str | None = option(None, metavar="FILE",
                                help="read options from a YAML file or a run's config.json (command-line options win)")

    @property
    def mode(self) -> str:
        return "quiet" if self.quiet else self.progress


@dataclass
class SampleConfig:
    """``flowsteer sample``: draw samples from a run folder."""

    model: str = option("", required=True, metavar="DIR", help="a flowsteer run folder")
    n: int = option(1000, help="number of samples")
    out: str = option("", required=True, metavar="FILE",
                      help=".npy for the array (data units), .png for an image grid or a 2-D scatter")
    solver: str | None = option(None, choices=SOLVERS,
                                help="heun (default for sigma = 0), euler, midpoint, dopri5 (adaptive), "
                                     "euler-maruyama (sigma > 0)")
    steps: int = option(50, help="solver steps")
    seed: int = option(0, help="seed of the noise")
    label: int | None = option(None, help="class label for a class-conditional model")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        p = []
        if not self.out.endswith((".npy", ".png")):
            p.append(f"--out {self.out!r}: unsupported extension; use .npy (array) or .png (picture)")
        if self.n < 1:
            p.append(f"--n must be >= 1 (got {self.n})")
        if self.steps < 1:
            p.append(f"--steps must be >= 1 (got {self.steps})")
        return p


@dataclass
class EvaluationConfig:
    """``flowsteer evaluate``: the figures of a run folder (see :mod:`flowsteer.evaluation`)."""

    model: str = option("", required=True, metavar="RUN_DIR", help="the run folder to evaluate")
    reward: str | None = option(None, metavar="SPEC", help="a reward spec, e.g. even-digits")
    reference: str | None = option(None, metavar="RUN_DIR", help="a run to measure W2 to (e.g. the base)")
    target: str | None = option(None, metavar="NAME|PATH",
                                help="data whose held-out split W2 and the Frechet distance are measured to")
    n: int = option(1000, help="number of samples")
    nfes: tuple[int, ...] = option((1, 2, 4, 8, 50), listed=True, flag="--nfe", metavar="K[,K...]",
                                   help="numbers of solver steps to sample with")
    seed: int = option(0, help="seed of the noise, labels and SDE")
    json: str | None = option(None, required=True, metavar="FILE", help="where to write the JSON object ('-' = stdout)")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        p = []
        if not isinstance(self.n, int) or self.n < 2:
            p.append(f"--n must be an integer >= 2 (got {self.n!r})")
        if not self.nfes or any(int(k) < 1 for k in self.nfes):
            p.append(f"--nfe must list integers >= 1 (got {','.join(map(str, self.nfes)) or 'nothing'})")
        if self.json not in (None, "-") and not str(self.json).endswith(".json"):
            p.append(f"--json {self.json!r}: give a file name ending in .json (or - for stdout)")
        return p


@dataclass
class ReportConfig:
    """``flowsteer report``: an HTML page comparing run folders."""

    runs: list[str] = option(factory=list, positional=True, nargs="+", metavar="RUN_DIR",
                             help="run folders or sweep folders")
    out: str = option("", required=True, metavar="DIR", help="folder to write index.html and its images into")
    title: str = option("flowsteer report", help="page title")

    def validate(self) -> list[str]:
        return []


@dataclass
class DemoConfig:
    """``flowsteer demo``: the main job."""

    out: str = option("runs/demo", metavar="DIR", help="output folder")
    fast: bool = option(False, help="a short run for a quick look (its figures are not meaningful)")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        return []


@dataclass
class ExportConfig:
    """``flowsteer export``: a run as files that diffusers and peft load (see :mod:`flowsteer.export`)."""

    run: str = option("", positional=True, metavar="RUN",
                      help="the run folder to export (the --out of flowsteer align, adapt or pretrain on a diffusers "
                           "base)")
    out: str = option("", required=True, metavar="DIR",
                      help="the folder to write; it must not exist yet or be empty (nothing in it is overwritten)")
    format: str = option("diffusers", choices=EXPORT_FORMATS,
                         help="diffusers: an SD3 LoRA file for pipe.load_lora_weights(OUT), or a model folder for "
                              "from_pretrained(OUT) (merged or fully fine-tuned runs); peft: adapter_model.safetensors "
                              "+ adapter_config.json for PeftModel.from_pretrained(network, OUT)")
    merge: bool = option(False, help="merge the LoRA into the base weights and write a diffusers model folder "
                                     "(SD3Transformer2DModel / UNet2DModel.from_pretrained(OUT)) instead of a LoRA "
                                     "file")
    lora_metadata: bool = option(False, help="keep lora_B as trained and record r and lora_alpha in the file's "
                                             "lora_adapter_metadata header (diffusers reads it) instead of folding "
                                             "lora_alpha / r into lora_B")

    def validate(self) -> list[str]:
        p = []
        if not str(self.run).strip():
            p.append("RUN is required: pass the run folder to export")
        if not str(self.out).strip():
            p.append("--out is required: pass a new or empty folder to write the export to")
        check_choice(p, "format", self.format, EXPORT_FORMATS)
        if not isinstance(self.merge, bool) or not isinstance(self.lora_metadata, bool):
            p.append("--merge and --lora-metadata are switches (true or false)")
        if self.merge and self.format == "peft":
            p.append("--merge writes a diffusers model folder, --format peft an unmerged adapter; drop one of them")
        if self.lora_metadata and (self.merge or self.format == "peft"):
            p.append("--lora-metadata describes the diffusers LoRA file; a merged or peft export has none (peft "
                     "keeps lora_alpha in adapter_config.json): drop --lora-metadata")
        if str(self.run).strip() and str(self.out).strip() and Path(self.run).resolve() == Path(self.out).resolve():
            p.append("--out is the run folder itself; pass a new folder for the export")
        return p
