"""The ``flowsteer`` command line, generated from the settings dataclasses.

    flowsteer pretrain --data NAME|PATH --out DIR [options]
    flowsteer sample   --model DIR --n N --out FILE.npy|FILE.png [options]
    flowsteer align    --base RUN_DIR --reward SPEC --out DIR [options]
    flowsteer adapt    --base RUN_DIR --target NAME|PATH --out DIR [options]
    flowsteer evaluate --model RUN_DIR [--reward SPEC] [--reference RUN_DIR] [--target NAME|PATH] --json FILE
    flowsteer report   RUN_DIR... --out DIR
    flowsteer export   RUN_DIR --out DIR [--format diffusers|peft] [--merge] [--lora-metadata]
    flowsteer demo     [--out DIR] [--fast]

Every option is a field of a settings dataclass (:mod:`flowsteer.config`, :mod:`flowsteer.methods.configs`):
its flag, type, choices, help and default come from the field, so a default lives in one place.  Every
option can also come from ``--config FILE`` (a YAML mapping of option names, or a run's ``config.json``,
whose saved settings are read the same way); options given on the command line win.  Options are never
abbreviated, and an unknown one gets a "did you mean" suggestion.  Bad input prints one line naming the
problem and the fix, and exits with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .config import DemoConfig, Display, EvaluationConfig, ExportConfig, ReportConfig, RunOutput, SampleConfig
from .errors import ConfigError, FlowsteerError
from .methods.configs import AdaptConfig, AlignConfig, PretrainConfig
from .options import Option, add_options, build_settings, config_argv, config_mapping, options_of

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass
class Command:
    """A subcommand: its settings dataclasses and the function that runs it."""

    help: str
    description: str
    settings: tuple[type, ...]
    run: Callable[["Parsed"], int]

    def options(self) -> list[Option]:
        return [o for cls in self.settings for o in options_of(cls)]


@dataclass
class Parsed:
    """A parsed command line: one instance per settings dataclass, and the full lists of ``listed`` options."""

    command: str
    settings: dict[type, Any]
    lists: dict[str, list[Any]] = field(default_factory=dict)

    def __getitem__(self, cls: type) -> Any:
        return self.settings[cls]

    @property
    def display(self) -> Display:
        return self.settings[Display]

    def say(self, text: str) -> None:
        if not self.display.quiet:
            print(text, flush=True)


# --------------------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowsteer", description="Fine-tune flow-matching generative models.")
    parser.add_argument("--version", action="version", version=f"flowsteer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        add_options(p, command.options())
    return parser


def _unknown(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> typing.NoReturn:
    flags = sorted({o.flag for o in COMMANDS[command].options()}) if command in COMMANDS else []
    token = extra[0]
    if token.startswith("-"):
        name = token.split("=", 1)[0]
        match = difflib.get_close_matches(name, flags, 1)
        hint = f"; did you mean {match[0]}?" if match else ""
        parser.error(f"unknown option {name}{hint}")
    parser.error(f"unexpected argument {token!r}")


def parse_args(argv: Sequence[str] | None = None) -> Parsed:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(EXIT_USER_ERROR)
    if extra:
        _unknown(parser, args.command, extra)
    command = COMMANDS[args.command]
    options = command.options()
    if getattr(args, "config", None):
        file_argv = config_argv(options, config_mapping(args.config, args.command), args.config)
        args = parser.parse_args([args.command, *file_argv, *argv[argv.index(args.command) + 1:]])
    values = {o.path: getattr(args, o.dest) for o in options}
    missing = [o.flag.lstrip("-") if o.spec.metadata.get("positional") else o.flag
               for o in options if o.spec.metadata.get("required") and values[o.path] in (None, "", [])]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; give it on the command line or in --config")
    lists = {}
    for o in options:
        if o.spec.metadata.get("listed") and isinstance(values[o.path], list):
            lists[o.path[-1]] = values[o.path]
            values[o.path] = tuple(values[o.path]) if typing.get_origin(o.kind) is tuple else values[o.path][0]
    return Parsed(args.command, {cls: build_settings(cls, values) for cls in command.settings}, lists)


# --------------------------------------------------------------------------- commands


def _check_out_dir(out: Path, resume: str | None) -> None:
    from .runs import CONFIG_FILE

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; choose a folder")
    if out.is_dir() and (out / CONFIG_FILE).exists() and not resume:
        raise ConfigError(f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose another --out")


def _check_init_lora(config: Any) -> None:
    """A clear error before any work if ``--init-lora`` cannot be read or disagrees with --lora-rank/--lora-alpha."""
    if config.init_lora is not None:
        from .methods.common import check_init_lora

        check_init_lora(config.init_lora, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)


def _diffusers_note(run: Any) -> str:
    """What the end of a LoRA run of a diffusers base wrote for diffusers (``config.json``'s ``diffusers_export``)."""
    note = run.config.get("diffusers_export")
    if not note:
        return ""
    if "load" in note:
        return f"; diffusers: {note['load']}"
    return f"; no diffusers export: {note.get('skipped') or note.get('failed')}"


def _validated(config: Any) -> Any:
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    return config


def cmd_pretrain(p: Parsed) -> int:
    from .methods.pretrain import pretrain

    config, target = p[PretrainConfig], p[RunOutput]
    out = Path(target.out)
    _check_out_dir(out, target.resume)
    run = pretrain(config, out, progress=p.display.mode, resume=target.resume)
    p.say(f"saved run to {out} ({run.config['steps_done']} steps); sample it with: "
          f"flowsteer sample --model {out} --n 1000 --out samples.npy")
    return 0


def cmd_sample(p: Parsed) -> int:
    from .devices import resolve_device
    from .plots import save_samples
    from .runs import load_run

    config = _validated(p[SampleConfig])
    run = load_run(config.model, device=resolve_device(config.device))
    out = Path(config.out)
    if out.suffix == ".png" and not (len(run.shape) == 3 or run.shape == (2,)):
        raise ConfigError(f"a PNG needs images or 2-D points, but this model makes shape {run.shape}; write .npy instead")
    result = run.sample(config.n, solver=config.solver, steps=config.steps, seed=config.seed, labels=config.label)
    save_samples(result.x, out, title=f"{run.config['data']['spec']} - {result.nfe} NFE")
    p.say(f"wrote {config.n} samples to {out} ({result.nfe} NFE)")
    return 0


def cmd_align(p: Parsed) -> int:
    from .bases import base_config
    from .distributed import setup
    from .methods.orw import align
    from .methods.sweep import align_sweep
    from .rewards import build_reward
    from .runs import PARETO_PLOT, SWEEP_FILE

    config, target = p[AlignConfig], p[RunOutput]
    alphas = p.lists.get("alpha", [config.alpha])
    out = Path(target.out)
    _check_out_dir(out, target.resume)
    if config.method == "orw" and "alpha" in p.lists and any(a > 0 for a in alphas):
        raise ConfigError("--method orw is ORW-CFM without the W2 term (alpha = 0); use --method orw-w2 to set --alpha")
    problems = []
    for alpha in alphas:  # every alpha of a sweep is checked with every other option: one message for all
        problems += [q for q in dataclasses.replace(config, alpha=alpha).validate() if q not in problems]
    if problems:
        raise ConfigError.listing(problems)
    base_config(config.base, prompt=config.prompt)  # a clear error before any work if --base or --prompt is wrong
    build_reward(config.reward)  # likewise for an unknown or unloadable reward
    _check_init_lora(config)
    if len(alphas) > 1:
        if target.resume:
            raise ConfigError("--resume continues one run; resume a sweep's runs one at a time (--out DIR/alpha-A)")
        summary = align_sweep(config, alphas, out, progress=p.display.mode)
        if not setup().is_main:
            return 0
        for point in summary["points"]:
            p.say(f"alpha={point['alpha']:g}: reward {point['reward_mean']:.3f}, "
                  + (f"class entropy {point['class_entropy']:.3f}, " if "class_entropy" in point else "")
                  + f"W2 to base {point['w2_to_reference']:.3f}")
        p.say(f"sweep: {out / SWEEP_FILE}  plot: {out / PARETO_PLOT}")
        return 0
    run = align(config, out, progress=p.display.mode, resume=target.resume)
    if not setup().is_main:  # under accelerate launch, rank 0 reports
        return 0
    f = run.config["final"]
    p.say(f"saved run to {out}: reward {f['reward_mean']:.3f} (std {f['reward_std']:.3f})"
          + (f", class entropy {f['class_entropy']:.3f}" if "class_entropy" in f else "")
          + f", W2 to base {f['w2_to_reference']:.3f}"
          + (f", alpha settled at {f['final_alpha']:.4g}" if config.w2_budget is not None else "") + _diffusers_note(run))
    return 0


def cmd_adapt(p: Parsed) -> int:
    from .bases import base_config
    from .distributed import setup
    from .methods.gft import adapt

    config, target = p[AdaptConfig], p[RunOutput]
    out = Path(target.out)
    _check_out_dir(out, target.resume)
    _validated(config)
    base_config(config.base, prompt=config.prompt)
    _check_init_lora(config)
    if config.method == "gft" and config.final_fraction == 0:
        print("flowsteer: warning: --final-fraction 0: the schedule never reaches tau = 0, so the model stops at a "
              "blend of the base and the target; give --final-fraction > 0 to reach the target", file=sys.stderr)
    run = adapt(config, out, progress=p.display.mode, resume=target.resume)
    if not setup().is_main:
        return 0
    f = run.config["final"]
    nfes = sorted(config.eval_nfes)
    few = 4 if 4 in nfes else nfes[0]
    p.say(f"saved run to {out}: W2 to target {f.get(f'w2_to_target_nfe{nfes[-1]}', float('nan')):.3f} at {nfes[-1]} "
          f"NFE, {f.get(f'w2_to_target_nfe{few}', float('nan')):.3f} at {few} NFE"
          + (f", path length {f['path_length']:.3f}" if "path_length" in f else "") + _diffusers_note(run))
    return 0


def cmd_evaluate(p: Parsed) -> int:
    from .evaluation import evaluate, evaluation_json, write_evaluation

    config = _validated(p[EvaluationConfig])
    result = evaluate(config)
    if config.json == "-":
        sys.stdout.write(evaluation_json(result))
    else:
        write_evaluation(result, Path(config.json))
        p.say(f"wrote {config.json}")
    return 0


def cmd_report(p: Parsed) -> int:
    from .report import write_report

    config = p[ReportConfig]
    index = write_report([Path(r) for r in config.runs], Path(config.out), title=config.title, say=p.say)
    p.say(f"report: {index.resolve()}")
    return 0


def cmd_export(p: Parsed) -> int:
    from .export import export_run
    from .runs import MODEL_CARD_FILE

    exported = export_run(p[ExportConfig])
    p.say(f"wrote the {exported.layout} export to {exported.path} (model card: {MODEL_CARD_FILE}); load it with "
          f"{exported.load}")
    return 0


def cmd_demo(p: Parsed) -> int:
    from .demo import run_demo

    config = p[DemoConfig]
    run_demo(Path(config.out), fast=config.fast, progress=p.display.mode, say=p.say, device=config.device)
    return 0


COMMANDS: dict[str, Command] = {
    "pretrain": Command("train a flow model from data with conditional flow matching",
                        "Train a flow model from data with conditional flow matching (CFM).",
                        (PretrainConfig, RunOutput, Display), cmd_pretrain),
    "sample": Command("draw samples from a run folder", "Draw samples from a trained run folder.",
                      (SampleConfig, Display), cmd_sample),
    "align": Command("fine-tune a run toward a reward (ORW-CFM-W2 and baselines)",
                     "Fine-tune a pretrained run toward a black-box reward with ORW-CFM-W2 (online reward-weighted CFM "
                     "+ W2 regulariser) or a baseline.", (AlignConfig, RunOutput, Display), cmd_align),
    "adapt": Command("fine-tune a run toward target samples (GFT or SFT)",
                     "Adapt a pretrained run to a new distribution given samples of it, with gradual fine-tuning (GFT: "
                     "a temperature schedule from the pretrained drift to the target) or standard fine-tuning (SFT).",
                     (AdaptConfig, RunOutput, Display), cmd_adapt),
    "evaluate": Command("metrics of a run folder as one JSON object",
                        "Evaluate a run folder: reward statistics, class histogram, diversity, W2 to a reference run, "
                        "W2 and Frechet distance to a target, quality per NFE, path length. The same run, options and "
                        "seed give identical JSON.", (EvaluationConfig, Display), cmd_evaluate),
    "report": Command("an HTML report of one or more run folders",
                      "Write a self-contained HTML page (and the PNGs it shows) comparing run folders: samples beside "
                      "their reference, training curves, the Pareto plot of a sweep, metric-vs-NFE curves and a table "
                      "of final metrics.  Opens from disk, no network.", (ReportConfig, Display), cmd_report),
    "export": Command("a run as files that diffusers and peft load",
                      "Write a run on a diffusers base as a diffusers LoRA file (pipe.load_lora_weights), a merged "
                      "diffusers model folder (from_pretrained) or a peft adapter (PeftModel.from_pretrained), with a "
                      "model card README.md that shows how to load it.", (ExportConfig, Display), cmd_export),
    "demo": Command("the main job: pretrain, align, adapt, evaluate and report on digits",
                    "Pretrain on sklearn's 8x8 digits, align toward even digits at alpha = 0 and the default alpha, "
                    "adapt digits 0-4 to 5-9 with GFT and SFT, evaluate every run and write an HTML report.",
                    (DemoConfig, Display), cmd_demo),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parsed = parse_args(argv)
        return COMMANDS[parsed.command].run(parsed)
    except FlowsteerError as exc:
        print(f"flowsteer: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt as exc:  # Ctrl-C outside training, or a second signal in it (interrupts.Abort)
        print(f"flowsteer: {str(exc) or 'interrupted'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
