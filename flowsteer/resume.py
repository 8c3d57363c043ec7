"""What ``--resume`` may change: a run's saved settings against those of the command that resumes it.

A run's ``config.json`` records its settings (``settings``).  ``flowsteer pretrain|align|adapt --out RUN
--resume`` continues with them: an option the command line leaves out comes from there, not from its
default (:func:`flowsteer.cli.parse_args`).  An option given with another value is

* applied from the checkpoint on and recorded (``config.json``'s ``settings``, a ``kind: resume`` record in
  ``metrics.jsonl`` and a one-line notice) when its field says ``on_resume="apply"``
  (:func:`flowsteer.config.option`): the optimisation (``--steps``, ``--batch-size``, ``--lr``,
  ``--warmup-steps``, ``--lr-schedule``, ``--grad-clip``, ``--max-bad-steps``), logging and checkpoints, precision and
  compilation, evaluation, and align's ``--tau``, ``--dual-lr``, ``--refresh-every``, rollout and reward
  timeout/bad-reward settings;
* refused in one line otherwise: everything that fixes the network, the data or the state the checkpoint
  restores (data, model, width, sigma, base, prompt, target, reward, method, LoRA, alpha, seed, EMA decay,
  weight decay, device, couplings, GFT's schedule and evaluation NFEs, ...) and, for adapt, ``--steps`` (its
  schedule spans them).

A new option is refused on resume until its field says otherwise.  Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Display, RunOutput
from .errors import ConfigError
from .methods.configs import AdaptConfig, AlignConfig, PretrainConfig
from .options import Option, add_options, config_argv, config_mapping

SETTINGS: dict[str, type] = {"pretrain": PretrainConfig, "align": AlignConfig, "adapt": AdaptConfig}


@dataclass(frozen=True)
class Change:
    """One setting whose value differs from the run's saved one."""

    flag: str
    old: Any
    new: Any
    apply: bool
    why: str = ""

    def refusal(self, out: str) -> str:
        old = "none, the default" if self.old is None else _show(self.old)
        return (f"--resume: {self.flag} {_show(self.new)} differs from the run's saved value ({old}), and "
                f"{self.flag} cannot change when a run resumes ({self.why}); drop {self.flag} to keep the run's "
                f"value, or start a new run in another folder than {out!r}")

    def notice(self, step: int) -> str:
        return (f"--resume: {self.flag} {_show(self.old)} -> {_show(self.new)} (applied from step {step} on and "
                "recorded in config.json)")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _norm(value: Any) -> Any:
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def settings_fields(cls: type) -> dict[str, dataclasses.Field]:
    """Field name -> field of a settings dataclass, nested settings (``train``) flattened."""
    found: dict[str, dataclasses.Field] = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            found.update(settings_fields(type(value)))
        else:
            found[f.name] = f
    return found


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with nested ones (``train``) flattened, as a config file names them."""
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for inner in (v for v in settings.values() if isinstance(v, dict)):
        flat.update(inner)
    return flat


def resume_changes(method: str, saved: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The settings that differ between the saved ``saved`` and the resuming ``new`` (field name -> value,
    nested or flat), each marked applied or refused; names missing from either side are not compared."""
    cls = SETTINGS.get(method)
    if cls is None:
        return []
    saved, new = flat_settings(saved), flat_settings(new)
    refused_here = dict(getattr(cls, "RESUME_REFUSED", {}))
    if hasattr(cls, "resume_refused"):  # refusals that depend on the saved run (e.g. a planned refresh count)
        refused_here.update(cls.resume_refused(saved))
    changes = []
    for name, f in settings_fields(cls).items():
        if name not in saved or name not in new or _norm(saved[name]) == _norm(new[name]):
            continue
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        apply = f.metadata.get("on_resume") == "apply" and name not in refused_here
        why = refused_here.get(name) or "it fixes the network, the data or state that the checkpoint restores"
        changes.append(Change(flag, _norm(saved[name]), _norm(new[name]), apply, why))
    return changes


def _given(options: list[Option], tokens: list[str], parser_class: type) -> set[str]:
    """The options that ``tokens`` (a config file's and the command line's) give, by ``dest``."""
    probe = parser_class(prog="flowsteer")
    add_options(probe, options, defaults=False)
    return set(vars(probe.parse_known_args(tokens)[0]))


def restore_saved_settings(command: str, options: list[Option], values: dict[tuple[str, ...], Any],
                           tokens: list[str], *, parser_class: type,
                           named: set[str] = frozenset()) -> set[tuple[str, ...]]:
    """``--resume``: fill ``values`` with the run's saved settings (``--out``'s ``config.json``) wherever the
    command line and ``--config`` leave an option out, and refuse a given value that cannot change on resume
    (:func:`resume_changes`).  Returns the paths restored.  ``parser_class``: the command line's parser.
    ``named``: the ``dest`` of options a ``--config`` file names, given even where they add no token (a switch
    set to its default, ``compile: false``), so that they are checked like the command line's, not restored.
    Without a run's ``config.json`` in ``--out`` nothing is restored (the resume then says what is missing)."""
    from .runs import CONFIG_FILE, RUN_FORMAT

    out = str(values.get(("out",)) or "")
    path = Path(out) / CONFIG_FILE
    if not out or not path.is_file():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} cannot be read ({type(exc).__name__}), so the run's settings cannot be "
                          "restored; start a new run with another --out") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT or not isinstance(data.get("settings"), dict):
        return set()
    from .ownership import check_folder  # first: may this command write --out at all (its own --base, another's run)?

    check_folder(Path(out), command, resume=True, base=values.get(("base",)))
    if data.get("method") != command:
        raise ConfigError(f"--resume: {out!r} holds a {data.get('method')} run, not {_a(command)} run; resume it with "
                          f"flowsteer {data.get('method')} --out {out} --resume, or choose another --out")
    saved_options = [o for o in options if o.owner not in (RunOutput, Display)]
    try:
        saved_argv = config_argv(saved_options, config_mapping(str(path), command), str(path))
    except ConfigError as exc:
        what = str(exc).split("; ")[0]  # the problem, without advice meant for a YAML file written by hand
        raise ConfigError(f"--resume: {what}; the run's saved settings are damaged - start a new run with another "
                          "--out") from None
    class SavedSettings(parser_class):  # type: ignore[misc, valid-type]
        def error(self, message: str) -> Any:
            raise ConfigError(f"--resume: {path}: {message}; the run's saved settings are damaged - start a new run "
                              "with another --out")

    probe = SavedSettings(prog=f"flowsteer {command}")
    add_options(probe, saved_options)
    saved = vars(probe.parse_args(saved_argv))
    given = _given(options, tokens, parser_class) | set(named)
    changes = resume_changes(command, {o.path[-1]: saved[o.dest] for o in saved_options},
                             {o.path[-1]: values[o.path] for o in saved_options if o.dest in given})
    refused = [c.refusal(out) for c in changes if not c.apply]
    if refused:
        raise ConfigError.listing(refused)
    restored = set()
    for o in saved_options:
        if o.dest not in given:
            values[o.path] = saved[o.dest]
            restored.add(o.path)
    return restored
