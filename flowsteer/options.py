"""Command-line options generated from settings dataclasses, and config files read the same way.

A field made with :func:`flowsteer.config.option` is one option: ``--field-name`` (or its ``flag``), typed by
its annotation (integers and finite floats are checked by the parser, ``listed`` fields take comma lists),
with its choices, help and default.  Nested dataclass fields (``train: TrainConfig``) are flattened.  A config
file (YAML, or a run's ``config.json``) becomes argv tokens, so it is checked exactly like the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import finite
from .errors import ConfigError

@dataclass(frozen=True)
class Option:
    """One command-line option: the settings field it fills (``path`` through nested dataclasses)."""

    owner: type
    path: tuple[str, ...]
    spec: dataclasses.Field
    default: Any
    kind: Any

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def negated(self) -> bool:
        return self.kind is bool and self.default is True

    @property
    def flag(self) -> str:
        return self.spec.metadata.get("flag") or "--" + self.path[-1].replace("_", "-")

    @property
    def names(self) -> set[str]:
        """The names a config file may use for it: the flag's and the field's."""
        return {self.flag.lstrip("-"), self.path[-1], self.path[-1].replace("_", "-")}


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def options_of(cls: type, instance: Any = None, prefix: tuple[str, ...] = ()) -> list[Option]:
    """Every option of a settings dataclass, nested dataclass fields flattened, with the instance's defaults."""
    instance = cls() if instance is None else instance
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            found += options_of(type(value), value, prefix + (f.name,))
        elif "help" in f.metadata:
            found.append(Option(cls, prefix + (f.name,), f, value, _base_type(hints[f.name])))
    return found


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not finite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value
    parse.__name__ = kind.__name__
    return parse


def _listed(kind: type) -> Callable[[str], list[Any]]:
    item = _number(kind)

    def parse(text: str) -> list[Any]:
        example = "whole numbers like 1,2,4" if kind is int else "a number or a list like 0,0.1,0.3,1"
        try:
            values = [item(v.strip()) for v in str(text).split(",") if v.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}; write {example}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: write {example}")
        return values
    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _help(option: Option) -> str:
    text, meta = option.spec.metadata["help"], option.spec.metadata
    if meta.get("required"):
        return f"{text} (required)"
    if option.kind is bool or option.default in (None, ""):
        return text
    shown = ",".join(map(str, option.default)) if isinstance(option.default, (list, tuple)) else option.default
    return f"{text} (default: {shown})"


def add_options(parser: argparse.ArgumentParser, options: list[Option], *, defaults: bool = True) -> None:
    """Add ``options`` to ``parser`` (``defaults=False``: an option not given is absent from the namespace,
    which tells what a command line gave)."""
    groups: dict[type, Any] = {}
    for option in options:
        meta = option.spec.metadata
        group = groups.setdefault(option.owner, parser.add_argument_group((option.owner.__doc__ or "").split("\n")[0]
                                                                          .rstrip(".") or None))
        if meta.get("positional"):
            group.add_argument(option.dest, nargs=meta.get("nargs"), metavar=meta.get("metavar"), help=meta["help"],
                               **({} if defaults else {"default": argparse.SUPPRESS}))
            continue
        kwargs: dict[str, Any] = {"dest": option.dest, "default": option.default if defaults else argparse.SUPPRESS,
                                  "help": _help(option)}
        if option.kind is bool:
            kwargs["action"] = "store_false" if option.negated else "store_true"
        else:
            item = typing.get_args(option.kind)[0] if typing.get_origin(option.kind) is tuple else option.kind
            if meta.get("listed"):
                kwargs["type"] = _listed(item)
            elif item in (int, float):
                kwargs["type"] = _number(item)
            for key in ("choices", "metavar", "nargs", "const"):
                if meta.get(key) is not None:
                    kwargs[key] = meta[key]
            if "choices" not in kwargs:
                kwargs.setdefault("metavar", option.path[-1].upper())
        group.add_argument(option.flag, **kwargs)


def build_settings(cls: type, values: dict[tuple[str, ...], Any], prefix: tuple[str, ...] = ()) -> Any:
    """An instance of ``cls`` from parsed values keyed by field path (nested dataclasses built recursively)."""
    kwargs = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        nested = getattr(defaults, f.name)
        if dataclasses.is_dataclass(nested):
            kwargs[f.name] = build_settings(type(nested), values, prefix + (f.name,))
        elif prefix + (f.name,) in values:
            kwargs[f.name] = values[prefix + (f.name,)]
    return cls(**kwargs)


def config_mapping(path: str, command: str) -> dict[str, Any]:
    """Option name -> value from a YAML file, or from the saved settings of a run's ``config.json``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist; check the --config path")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file in UTF-8; give a YAML file or a run's config.json") from None
    except (yaml.YAMLError, ValueError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else f" at line {exc.lineno}" if hasattr(exc, "lineno") else ""
        raise ConfigError(f"{path}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}{at}; fix the file's "
                          "syntax") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    if data.get("format") == "flowsteer-run":  # a run's config.json: its saved settings
        if data.get("method") != command:
            raise ConfigError(f"{path} is the config of a {data.get('method')} run; use it with flowsteer "
                              f"{data.get('method')}, or give a YAML file")
        settings = dict(data.get("settings") or {})
        nested = {k: settings.pop(k) for k in list(settings) if isinstance(settings[k], dict)}
        data = {**settings, **{k: v for inner in nested.values() for k, v in inner.items()}}
    return data


def config_argv(options: list[Option], data: dict[str, Any], path: str) -> list[str]:
    """argv tokens for a config mapping (so argparse checks their types like the command line's)."""
    by_name = {name: o for o in options for name in o.names}
    argv: list[str] = []
    unknown = []
    for key, value in data.items():
        option = by_name.get(str(key))
        if option is None or option.spec.metadata.get("positional") or option.path[-1] == "config":
            unknown.append(str(key))
            continue
        if option.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: option {key!r} must be true or false, got {value!r}")
            if str(key).startswith("no-"):
                value = not value
            if value != option.default:
                argv.append(option.flag)
        elif value is not None:
            if isinstance(value, (dict, list, tuple)) and not option.spec.metadata.get("listed"):
                raise ConfigError(f"{path}: option {key!r} takes one value, got {value!r}")
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            argv += [option.flag, text]
    if unknown:
        names = sorted({o.flag.lstrip("-") for o in options if not o.spec.metadata.get("positional")})
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k.replace("_", "-"), names, 1)) else k
                 for k in unknown]
        raise ConfigError(f"{path}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(names)}")
    return argv
