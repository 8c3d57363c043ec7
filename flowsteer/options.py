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


def _key_twice(node: Any) -> tuple[str, int, int] | None:
    """(key, first line, second line) of a key that a YAML mapping repeats (PyYAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in lines:
                    return key.value, lines[key.value], key.start_mark.line + 1
                lines[key.value] = key.start_mark.line + 1
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []
    return next((found for child in children if (found := _key_twice(child))), None)


def config_mapping(path: str, command: str) -> dict[str, Any]:
    """Option name -> value from a YAML file, or from the saved settings of a run's ``config.json``.

    Anything that is not such a file (a folder, bytes that are not UTF-8 text, a YAML list or scalar, broken
    syntax) is one :class:`ConfigError` line naming the file and the fix.
    """
    if not str(path).strip():
        raise ConfigError("--config is empty; give a YAML file, or drop --config")
    file = Path(path)
    kind = "JSON" if file.suffix == ".json" else "YAML"
    if file.is_dir():
        raise ConfigError(f"--config {path!r} is a folder; give a YAML file (or the config file inside a run folder)")
    if not file.exists():
        raise ConfigError(f"config file {path!r} does not exist; check the --config path")
    if not file.is_file():
        raise ConfigError(f"--config {path!r} is not a regular file; give a YAML file")
    try:
        raw = file.read_bytes()
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ConfigError(f"{path}: is UTF-16 text; save it as UTF-8")
        if b"\x00" in raw:
            raise ConfigError(f"{path}: is a binary file, not {kind}; give a YAML file of option: value lines")
        text = raw.decode("utf-8-sig")  # a UTF-8 BOM (Windows editors) is allowed
        twice = None if kind == "JSON" else _key_twice(yaml.compose(text, Loader=yaml.SafeLoader))
        if twice:
            raise ConfigError(f"{path}: key {twice[0]!r} is given twice (lines {twice[1]} and {twice[2]}); keep one")
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8, or give a YAML file or a run's config.json") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); check the file's permissions") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; write one option: value per line") from None
    except (yaml.YAMLError, ValueError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else f" at line {exc.lineno}" if hasattr(exc, "lineno") else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or getattr(exc, "reason", None)
        why = f" ({' '.join(str(problem).split())})" if problem else ""
        raise ConfigError(f"{path}: not valid {kind}{at}{why}; fix the file's syntax") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        what = {list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}.get(type(data))
        shown = " ".join(repr(data).split())
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise ConfigError(f"{path}: holds {what or type(data).__name__} ({shown}), not a mapping of option: value; "
                          "write one option: value per line (e.g. steps: 500)")
    if data.get("format") == "flowsteer-run":  # a run's config.json: its saved settings
        if data.get("method") != command:
            raise ConfigError(f"{path} is the config of a {data.get('method')} run; use it with flowsteer "
                              f"{data.get('method')}, or give a YAML file")
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: its 'settings' are not a mapping; the file is damaged - give a YAML file")
        settings = dict(settings)
        nested = {k: settings.pop(k) for k in list(settings) if isinstance(settings[k], dict)}
        data = {**settings, **{k: v for inner in nested.values() for k, v in inner.items()}}
    return data


def config_argv(options: list[Option], data: dict[str, Any], path: str,
                named: set[str] | None = None) -> list[str]:
    """argv tokens for a config mapping, each value checked here so that a bad one names the file and the key.

    ``named``, when given, receives the ``dest`` of every option the mapping names, also of a switch set to its
    default (``compile: false``), which gives no token but is still the user's explicit choice (``--resume``).

    A section of nested settings (``train: {lr: 0.001}``, as in a run's config.json) is read like its options
    at the top level; an option given twice (``lr`` and ``train.lr``, or ``batch_size`` and ``batch-size``) is
    an error, as is a mapping or list where one value belongs.
    """
    by_name = {name: o for o in options for name in o.names}
    sections = {o.path[0] for o in options if len(o.path) > 1}
    items: list[tuple[str, Any, Option | None]] = []
    for key, value in data.items():
        if str(key) in sections and isinstance(value, dict):
            for k, v in value.items():
                option = by_name.get(str(k))
                items.append((f"{key}.{k}", v, option if option is not None and option.path[0] == str(key) else None))
        else:
            items.append((str(key), value, by_name.get(str(key))))
    argv: list[str] = []
    unknown: list[str] = []
    seen: dict[tuple[str, ...], str] = {}
    for key, value, option in items:
        if option is None or option.spec.metadata.get("positional") or option.path[-1] == "config":
            unknown.append(key)
            continue
        if option.path in seen:
            raise ConfigError(f"{path}: option {option.flag.lstrip('-')} is given twice ({seen[option.path]} and "
                              f"{key}); keep one")
        seen[option.path] = key
        if named is not None:
            named.add(option.dest)
        name = key.rsplit(".", 1)[-1]
        if option.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: option {key!r} must be true or false, got {value!r}")
            if name.startswith("no-"):
                value = not value
            if value != option.default:
                argv.append(option.flag)
        elif value is not None:
            argv.append(f"{option.flag}={_config_value(option, key, value, path)}")
    if unknown:
        names = sorted({o.flag.lstrip("-") for o in options if not o.spec.metadata.get("positional")})
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k.split(".")[-1].replace("_", "-"),
                                                                                 names, 1)) else k for k in unknown]
        raise ConfigError(f"{path}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(names)}")
    return argv


def _config_value(option: Option, key: str, value: Any, path: str) -> str:
    """The command-line text of one config value, checked like the command line checks it (one line if bad)."""
    listed = option.spec.metadata.get("listed")
    default = option.default
    shown = f"[{', '.join(map(str, default))}]" if isinstance(default, (list, tuple)) else default
    example = f"{key.rsplit('.', 1)[-1]}: {shown if default not in (None, '', ()) else 'VALUE'}"
    nested = isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value)
    if isinstance(value, dict) or nested or (isinstance(value, (list, tuple)) and not listed):
        what = "a mapping" if isinstance(value, dict) else "a list"
        shown = " ".join(repr(value).split())
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise ConfigError(f"{path}: option {key!r} takes {'a value or a list of values' if listed else 'one value'}, "
                          f"got {what} ({shown}); write it like {example}")
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    item = typing.get_args(option.kind)[0] if typing.get_origin(option.kind) is tuple else option.kind
    check = _listed(item) if listed else _number(item) if item in (int, float) else None
    try:
        if check is not None:
            check(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{path}: option {key!r}: {exc}; write it like {example}") from None
    choices = option.spec.metadata.get("choices")
    if choices and not listed and text not in choices:
        raise ConfigError(f"{path}: option {key!r} is {text!r}; use one of {', '.join(map(str, choices))}")
    return text
