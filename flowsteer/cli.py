"""The ``flowsteer`` command line.

    flowsteer pretrain --data NAME|PATH --out DIR [options]
    flowsteer sample   --model DIR --n N --out FILE.npy|FILE.png [options]
    flowsteer align    --base RUN_DIR --reward SPEC --out DIR [options]
    flowsteer adapt    --base RUN_DIR --target NAME|PATH --out DIR [options]
    flowsteer evaluate --model RUN_DIR [--reward SPEC] [--reference RUN_DIR] [--target NAME|PATH] --json FILE
    flowsteer report   RUN_DIR... --out DIR
    flowsteer demo     [--out DIR] [--fast]

Every option can also come from ``--config FILE.yaml`` (keys are the option
names, e.g. ``batch-size: 128``); options given on the command line win.
Bad input prints one line naming the problem and the fix, and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import ConfigError, FlowsteerError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- options


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (command-line options win)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                     help="progress display: a bar on a terminal, log lines otherwise (default: auto)")


def _add_train_options(p: argparse.ArgumentParser, *, align: bool = False, adapt: bool = False) -> None:
    from .config import TrainConfig, adapt_train_defaults, align_train_defaults

    d = align_train_defaults() if align else adapt_train_defaults() if adapt else TrainConfig()
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help=f"gradient steps (default: {d.steps})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"samples per step (default: {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate after warm-up (default: {d.lr})")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"linear learning-rate warm-up steps (default: {d.warmup_steps})")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"max global gradient norm, 0 = off (default: {d.grad_clip})")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help=f"EMA decay of the saved sampling weights, 0 = off (default: {d.ema_decay})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default: 0)")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds the model init and every random draw (default: 0)")
    g.add_argument("--log-every", type=int, default=d.log_every,
                   help=f"steps between metrics.jsonl records (default: {d.log_every})")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoint-STEP/ folders; 0 = only at the end (default: 0)")
    g.add_argument("--keep-last", type=int, default=d.keep_last,
                   help=f"checkpoint folders to keep (default: {d.keep_last})")
    g.add_argument("--max-bad-steps", type=int, default=d.max_bad_steps,
                   help=f"non-finite steps in a row (each skipped) that stop the run (default: {d.max_bad_steps})")
    g.add_argument("--log", choices=("jsonl", "tensorboard"), default="jsonl",
                   help="jsonl: metrics.jsonl only (default); tensorboard: also TensorBoard events in OUT/tensorboard "
                        "(extra: tensorboard)")


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|checkpoint-STEP",
                   help="continue the run in --out from its latest checkpoint (or the one named)")


def build_parser() -> argparse.ArgumentParser:
    from .config import (ALIGN_DEFAULT_ALPHA, ALIGN_DEFAULT_TAU, ALIGN_METHODS, COUPLINGS, SCHEDULES,
                         SOLVERS, TIME_SAMPLERS)

    parser = _Parser(prog="flowsteer", description="Fine-tune flow-matching generative models.")
    parser.add_argument("--version", action="version", version=f"flowsteer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("pretrain", help="train a flow model from data with conditional flow matching",
                       description="Train a flow model from data with conditional flow matching (CFM).")
    p.add_argument("--data", metavar="NAME|PATH",
                   help="moons, 8gaussians, checkerboard, circles, swissroll, digits[:0,2,4], a .npy/.npz file "
                        "or a folder of PNG/JPEG images")
    p.add_argument("--out", metavar="DIR", help="run folder to write (model.safetensors, config.json, metrics.jsonl)")
    p.add_argument("--model", default="auto", metavar="KIND",
                   help="network: auto (= mlp, fast on CPU), mlp, unet (images), diffusers:DIR (a saved diffusers "
                        "UNet2DModel; extra: diffusers) or module:pkg.mod:Class (your net(t, x)) (default: auto)")
    p.add_argument("--width", type=int, default=None, help="hidden width (mlp) or base channels (unet)")
    p.add_argument("--sigma", type=float, default=0.0,
                   help="0 = straight paths and ODE sampling; > 0 = Brownian bridge and SDE sampling (default: 0)")
    p.add_argument("--coupling", choices=COUPLINGS, default="independent",
                   help="pairing of noise and data in a minibatch (default: independent)")
    p.add_argument("--time-sampler", choices=TIME_SAMPLERS, default="uniform",
                   help="distribution of training times (default: uniform)")
    p.add_argument("--conditional", action="store_true", help="train a class-conditional model (needs labels)")
    p.add_argument("--normalize", choices=("auto", "standardize", "none"), default="auto",
                   help="auto: standardise vectors, keep images in [-1, 1] (default: auto)")
    _add_resume(p)
    _add_train_options(p)
    _add_common(p)

    s = sub.add_parser("sample", help="draw samples from a run folder",
                       description="Draw samples from a trained run folder.")
    s.add_argument("--model", metavar="DIR", help="a flowsteer run folder")
    s.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
    s.add_argument("--out", metavar="FILE", help=".npy for the array (data units), .png for an image grid or a 2-D scatter")
    s.add_argument("--solver", choices=SOLVERS, default=None,
                   help="heun (default for sigma = 0), euler, midpoint, dopri5 (adaptive), euler-maruyama (sigma > 0)")
    s.add_argument("--steps", type=int, default=50, help="solver steps (default: 50)")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    s.add_argument("--label", type=int, default=None, help="class label for a class-conditional model")
    _add_common(s)

    a = sub.add_parser("align", help="fine-tune a run toward a reward (ORW-CFM-W2 and baselines)",
                       description="Fine-tune a pretrained run toward a black-box reward with ORW-CFM-W2 "
                                   "(online reward-weighted CFM + W2 regulariser) or a baseline.")
    a.add_argument("--base", metavar="RUN_DIR",
                   help="the pretrained run folder (also the reference model), or diffusers:DIR (a saved diffusers "
                        "UNet2DModel or Stable Diffusion 3 pipeline; extra: diffusers)")
    a.add_argument("--reward", metavar="SPEC",
                   help="even-digits, digits:0,2,4, jpeg-compressibility, jpeg-incompressibility, target:FILE.npy, "
                        "clip:PROMPT[;contrast=TEXT][;model=DIR|HUB_ID] (extra: clip), "
                        "python:MODULE:FUNCTION, python:FILE.py:FUNCTION, or a weighted sum 0.5*A+0.5*B")
    a.add_argument("--prompt", metavar="TEXT", default=None,
                   help="the text that conditions a text-to-image base (an SD3 pipeline), encoded once by its own encoders")
    a.add_argument("--lora-rank", type=int, default=0, metavar="R",
                   help="train rank-R LoRA adapters (peft) instead of every weight; the reference is the same network "
                        "with its adapters disabled (default: 0 = full fine-tuning)")
    a.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="LoRA scale: B A is multiplied by A / R (default: R)")
    a.add_argument("--out", metavar="DIR", help="run folder to write (a folder of runs for an alpha sweep)")
    a.add_argument("--method", choices=ALIGN_METHODS, default="orw-w2",
                   help="orw-w2 (default), orw (alpha = 0), rwr (offline reward-weighted CFM), raft (top fraction)")
    a.add_argument("--alpha", default=None, metavar="A[,A...]",
                   help=f"weight of the W2 term (default: {ALIGN_DEFAULT_ALPHA}); larger keeps the model closer to "
                        "the base and more diverse, smaller chases the reward; a list like 0,0.1,0.3,1 runs a sweep")
    a.add_argument("--tau", type=float, default=ALIGN_DEFAULT_TAU,
                   help=f"inverse temperature of the weights exp(tau*r) (default: {ALIGN_DEFAULT_TAU})")
    a.add_argument("--refresh-every", type=int, default=50, help="K: steps between refreshes of the sampling policy (default: 50)")
    a.add_argument("--rollout-steps", type=int, default=10, help="solver steps of each rollout (default: 10)")
    a.add_argument("--rollout-solver", choices=SOLVERS, default="euler", help="solver of the rollouts (default: euler)")
    a.add_argument("--weights", choices=("mean", "none"), default="mean",
                   help="mean: w/mean(w), so alpha means the same for any reward scale (default); none: raw exp(tau*r)")
    a.add_argument("--standardize-reward", action="store_true", help="weight by the batch-standardised reward")
    a.add_argument("--coupling", choices=COUPLINGS, default="independent", help="noise-data pairing (weights follow it)")
    a.add_argument("--reward-timeout", type=float, default=None, metavar="SECONDS",
                   help="fail with a clear message when one reward call takes longer (default: no limit)")
    a.add_argument("--misaligned-weights", action="store_true",
                   help="do not re-order the weights with an OT re-pairing: reproduces the released code's bug, for comparison only")
    a.add_argument("--w2", action="store_true", help="add the W2 term to --method rwr or raft")
    a.add_argument("--w2-budget", type=float, default=None, metavar="EPS",
                   help="adapt alpha by dual ascent so that the W2-bound term stays <= EPS; reports the alpha it settles on")
    a.add_argument("--dual-lr", type=float, default=0.02, help="step of the dual ascent on alpha (default: 0.02)")
    a.add_argument("--raft-fraction", type=float, default=0.25, help="share of each batch RAFT keeps (default: 0.25)")
    a.add_argument("--rwr-samples", type=int, default=4096, help="size of RWR's fixed sample set (default: 4096)")
    a.add_argument("--on-bad-reward", choices=("stop", "skip"), default="stop",
                   help="stop on a NaN/inf reward (default) or skip those samples")
    a.add_argument("--eval-every", type=int, default=250, help="steps between evaluations (default: 250)")
    a.add_argument("--eval-samples", type=int, default=512, help="samples per evaluation (default: 512)")
    _add_resume(a)
    _add_train_options(a, align=True)
    _add_common(a)

    g = sub.add_parser("adapt", help="fine-tune a run toward target samples (GFT or SFT)",
                       description="Adapt a pretrained run to a new distribution given samples of it, with gradual "
                                   "fine-tuning (GFT: a temperature schedule from the pretrained drift to the target) "
                                   "or standard fine-tuning (SFT).")
    g.add_argument("--base", metavar="RUN_DIR", help="the pretrained run folder (v_pre)")
    g.add_argument("--target", metavar="NAME|PATH", help="target samples: a data set name (e.g. moons, digits:5-9) or a file")
    g.add_argument("--out", metavar="DIR", help="run folder to write")
    g.add_argument("--method", choices=("gft", "sft"), default="gft", help="gft (default) or sft (tau = 0 throughout)")
    g.add_argument("--schedule", choices=SCHEDULES, default="geometric", help="temperature schedule (default: geometric)")
    g.add_argument("--tau0", type=float, default=10.0, help="temperature of the first stage (default: 10)")
    g.add_argument("--stages", type=int, default=4, help="stages with tau > 0 before the final tau = 0 phase (default: 4)")
    g.add_argument("--final-fraction", type=float, default=0.25, help="share of the steps at tau = 0 (default: 0.25)")
    g.add_argument("--no-divide", action="store_true", help="do not divide the loss by 1 + tau")
    g.add_argument("--coupling", choices=COUPLINGS, default="independent", help="noise-target pairing (default: independent)")
    g.add_argument("--sigma", type=float, default=None, help="diffusion of a stochastic flow; must equal the base's (default: the base's)")
    g.add_argument("--n-target", type=int, default=None, help="use only N target samples (the limited-data regime)")
    g.add_argument("--eval-every", type=int, default=500, help="steps between evaluations (default: 500)")
    _add_resume(g)
    _add_train_options(g, adapt=True)
    _add_common(g)

    e = sub.add_parser("evaluate", help="metrics of a run folder as one JSON object",
                       description="Evaluate a run folder: reward statistics, class histogram, diversity, W2 to a "
                                   "reference run, W2 and Frechet distance to a target, quality per NFE, path length. "
                                   "The same run, options and seed give identical JSON.")
    e.add_argument("--model", metavar="RUN_DIR", help="the run folder to evaluate")
    e.add_argument("--reward", metavar="SPEC", default=None, help="a reward spec, e.g. even-digits")
    e.add_argument("--reference", metavar="RUN_DIR", default=None, help="a run to measure W2 to (e.g. the base)")
    e.add_argument("--target", metavar="NAME|PATH", default=None, help="data whose held-out split W2/Frechet are measured to")
    e.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
    e.add_argument("--nfe", default="1,2,4,8,50", metavar="K[,K...]", help="numbers of steps (default: 1,2,4,8,50)")
    e.add_argument("--seed", type=int, default=0, help="seed of the noise, labels and SDE (default: 0)")
    e.add_argument("--json", metavar="FILE", help="where to write the JSON object ('-' = stdout)")
    _add_common(e)

    r = sub.add_parser("report", help="an HTML report of one or more run folders",
                       description="Write a self-contained HTML page (and the PNGs it shows) comparing run folders: "
                                   "samples beside their reference, training curves, the Pareto plot of a sweep, "
                                   "metric-vs-NFE curves and a table of final metrics.  Opens from disk, no network.")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or sweep folders")
    r.add_argument("--out", metavar="DIR", help="folder to write index.html and its images into")
    r.add_argument("--title", default="flowsteer report", help="page title")
    _add_common(r)

    d = sub.add_parser("demo", help="the main job: pretrain, align, adapt, evaluate and report on digits",
                       description="Pretrain on sklearn's 8x8 digits, align toward even digits at alpha = 0 and the "
                                   "default alpha, adapt digits 0-4 to 5-9 with GFT and SFT, evaluate every run "
                                   "and write an HTML report.")
    d.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--fast", action="store_true", help="a short run for a quick look")
    _add_common(d)
    return parser


# --------------------------------------------------------------------------- YAML


def _config_argv(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Turn a YAML mapping into argv tokens for ``parser`` (so argparse checks their types)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist; check the --config path")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}; fix the file's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    options = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    unknown = []
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = options.get(dest)
        if action is None or dest in ("config", "help"):
            unknown.append(str(key))
            continue
        flag = action.option_strings[-1]
        if dest == "resume" and isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: option {key!r} must be true or false, got {value!r}")
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    if unknown:
        valid = sorted(a.option_strings[-1].lstrip("-") for a in options.values() if a.dest not in ("help", "config"))
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return argv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        args = parser.parse_args([args.command, *_config_argv(sub, args.config), *argv[1:]])
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(EXIT_USER_ERROR)
    return args


# --------------------------------------------------------------------------- commands


def _progress_mode(args: argparse.Namespace) -> str:
    return "quiet" if args.quiet else args.progress


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) in (None, "")]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; give it on the command line or in --config")


def _check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; choose a folder")
    if out.is_dir() and (out / "config.json").exists() and not resume:
        raise ConfigError(f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose another --out")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .methods.pretrain import PretrainConfig, pretrain

    _require(args, "data", "out")
    out = Path(args.out)
    _check_out_dir(out, args.resume)
    train = _train_config(args)
    config = PretrainConfig(
        data=args.data, model=args.model, width=args.width, sigma=args.sigma, coupling=args.coupling,
        time_sampler=args.time_sampler, conditional=args.conditional, normalize=args.normalize, train=train,
    )
    run = pretrain(config, out, progress=_progress_mode(args), resume=args.resume)
    _say(args, f"saved run to {out} ({run.config['steps_done']} steps); sample it with: flowsteer sample --model {out} --n 1000 --out samples.npy")
    return 0


def _write_samples(x, out: Path, *, title: str | None = None) -> None:
    import numpy as np

    from .io import atomic_path
    from .plots import save_samples_png

    if out.suffix == ".npy":
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, x.numpy())
    else:
        save_samples_png(x, out, title=title)


def cmd_sample(args: argparse.Namespace) -> int:
    from .runs import load_run

    _require(args, "model", "out")
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise ConfigError(f"--out {str(out)!r}: unsupported extension; use .npy (array) or .png (picture)")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1 (got {args.n})")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {args.steps})")
    run = load_run(args.model)
    if out.suffix == ".png" and not (len(run.shape) == 3 or run.shape == (2,)):
        raise ConfigError(f"a PNG needs images or 2-D points, but this model makes shape {run.shape}; write .npy instead")
    result = run.sample(args.n, solver=args.solver, steps=args.steps, seed=args.seed,
                        labels=None if args.label is None else args.label)
    _write_samples(result.x, out, title=f"{run.config['data']['spec']} - {result.nfe} NFE")
    _say(args, f"wrote {args.n} samples to {out} ({result.nfe} NFE)")
    return 0


def _train_config(args: argparse.Namespace):
    from .config import TrainConfig

    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, weight_decay=args.weight_decay, seed=args.seed,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
        max_bad_steps=args.max_bad_steps, log=args.log,
    )
    return train


def _is_main_process() -> bool:
    from .distributed import setup

    return setup().is_main


def _parse_alphas(text: str | None) -> list[float]:
    from .config import ALIGN_DEFAULT_ALPHA

    if text is None:
        return [ALIGN_DEFAULT_ALPHA]
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--alpha {text!r}: write a number or a list like 0,0.1,0.3,1") from None
    if not values:
        raise ConfigError("--alpha is empty; write a number or a list like 0,0.1,0.3,1")
    return values  # the sign is checked with every other option (one message for all problems)


def cmd_align(args: argparse.Namespace) -> int:
    from .methods.orw import AlignConfig, align, align_sweep
    from .rewards import build_reward
    from .runs import base_config

    _require(args, "base", "reward", "out")
    alphas = _parse_alphas(args.alpha)
    out = Path(args.out)
    _check_out_dir(out, args.resume)
    base_config(args.base, prompt=args.prompt)  # a clear error before any work if --base or --prompt is wrong
    build_reward(args.reward)  # likewise for an unknown or unloadable reward
    config = AlignConfig(
        base=args.base, reward=args.reward, method=args.method, alpha=alphas[0], tau=args.tau,
        refresh_every=args.refresh_every, rollout_solver=args.rollout_solver, rollout_steps=args.rollout_steps,
        weights=args.weights, standardize_reward=args.standardize_reward, coupling=args.coupling,
        raft_fraction=args.raft_fraction, rwr_samples=args.rwr_samples, w2=args.w2, w2_budget=args.w2_budget,
        dual_lr=args.dual_lr, misaligned_weights=args.misaligned_weights, reward_timeout=args.reward_timeout,
        on_bad_reward=args.on_bad_reward, eval_every=args.eval_every, eval_samples=args.eval_samples,
        prompt=args.prompt, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, train=_train_config(args),
    )
    if args.method == "orw" and args.alpha is not None and any(a > 0 for a in alphas):
        raise ConfigError("--method orw is ORW-CFM without the W2 term (alpha = 0); use --method orw-w2 to set --alpha")
    problems = [p for p in config.validate() if not p.startswith("--alpha must be")]
    bad = [v for v in alphas if not v >= 0]
    if bad:
        problems.insert(0, f"--alpha must be >= 0 (got {', '.join(map(str, bad))})")
    if problems:
        raise ConfigError.listing(problems)
    if len(alphas) > 1:
        if args.resume:
            raise ConfigError("--resume continues one run; resume a sweep's runs one at a time (--out DIR/alpha-A)")
        summary = align_sweep(config, alphas, out, progress=_progress_mode(args))
        if not _is_main_process():
            return 0
        for p in summary["points"]:
            _say(args, f"alpha={p['alpha']:g}: reward {p['reward_mean']:.3f}, "
                       + (f"class entropy {p['class_entropy']:.3f}, " if "class_entropy" in p else "")
                       + f"W2 to base {p['w2_to_reference']:.3f}")
        _say(args, f"sweep: {out / 'sweep.json'}  plot: {out / 'pareto.png'}")
        return 0
    run = align(config, out, progress=_progress_mode(args), resume=args.resume)
    if not _is_main_process():  # under accelerate launch, rank 0 reports
        return 0
    f = run.config["final"]
    _say(args, f"saved run to {out}: reward {f['reward_mean']:.3f} (std {f['reward_std']:.3f})"
               + (f", class entropy {f['class_entropy']:.3f}" if "class_entropy" in f else "")
               + f", W2 to base {f['w2_to_reference']:.3f}"
               + (f", alpha settled at {f['final_alpha']:.4g}" if config.w2_budget is not None else ""))
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from .methods.gft import AdaptConfig, adapt
    from .runs import read_config

    _require(args, "base", "target", "out")
    out = Path(args.out)
    _check_out_dir(out, args.resume)
    read_config(args.base)
    config = AdaptConfig(
        base=args.base, target=args.target, method=args.method, schedule=args.schedule, tau0=args.tau0,
        stages=args.stages, final_fraction=args.final_fraction, divide=not args.no_divide, coupling=args.coupling,
        sigma=args.sigma, n_target=args.n_target, eval_every=args.eval_every, train=_train_config(args),
    )
    if args.method == "gft" and args.final_fraction == 0:
        print("flowsteer: warning: --final-fraction 0: the schedule never reaches tau = 0, so the model stops at a "
              "blend of the base and the target; give --final-fraction > 0 to reach the target", file=sys.stderr)
    run = adapt(config, out, progress=_progress_mode(args), resume=args.resume)
    f = run.config["final"]
    _say(args, f"saved run to {out}: W2 to target {f.get('w2_nfe50', float('nan')):.3f} at 50 NFE, "
               f"{f.get('w2_nfe4', float('nan')):.3f} at 4 NFE"
               + (f", path length {f['path_length']:.3f}" if "path_length" in f else ""))
    return 0


def _parse_nfes(text: str) -> tuple[int, ...]:
    try:
        nfes = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--nfe {text!r}: write whole numbers like 1,2,4,8,50") from None
    if not nfes or min(nfes) < 1:
        raise ConfigError(f"--nfe {text!r}: every number of steps must be >= 1")
    return nfes


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationConfig, evaluate, evaluation_json, write_evaluation

    _require(args, "model", "json")
    if args.json != "-" and not args.json.endswith(".json"):
        raise ConfigError(f"--json {args.json!r}: give a file name ending in .json (or - for stdout)")
    config = EvaluationConfig(model=args.model, reward=args.reward, reference=args.reference, target=args.target,
                              n=args.n, nfes=_parse_nfes(args.nfe), seed=args.seed)
    result = evaluate(config)
    if args.json == "-":
        sys.stdout.write(evaluation_json(result))
    else:
        write_evaluation(result, Path(args.json))
        _say(args, f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    _require(args, "out")
    index = write_report([Path(r) for r in args.runs], Path(args.out), title=args.title,
                         say=lambda t: _say(args, t))
    _say(args, f"report: {index.resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), fast=args.fast, progress=_progress_mode(args), say=lambda t: _say(args, t))
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "sample": cmd_sample, "align": cmd_align, "adapt": cmd_adapt,
            "evaluate": cmd_evaluate, "report": cmd_report, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except FlowsteerError as exc:
        print(f"flowsteer: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt:
        print("flowsteer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
