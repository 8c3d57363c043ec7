"""Every numeric option of every command is checked for finiteness, 64 bits and its declared range.

The walk covers the options as the CLI generates them from the settings dataclasses, so an option added
later is covered without a new test: it must declare a range (``ge``/``gt``/``le``/``lt`` of
:func:`flowsteer.config.option`), and NaN, infinity, a value beyond 64 bits and a value outside that range
each get exit status 2 and one stderr line naming it.  The same holds for YAML files and for the Python
settings' ``validate()``.
"""

import dataclasses
import typing

import pytest

from conftest import cli
from flowsteer.cli import COMMANDS
from flowsteer.config import INT_LIMIT, DemoConfig, EvaluationConfig, ExportConfig, ReportConfig, SampleConfig, \
    TrainConfig, numeric_kind
from flowsteer.methods.configs import AdaptConfig, AlignConfig, PretrainConfig

# the least a command needs to reach its option checks; nothing here exists, so a value that wrongly passed
# would fail at once on the missing file (and the test on the message), never start a long run
MINIMAL = {
    "pretrain": "pretrain --data {tmp}/missing.npy --out {tmp}/new",
    "align": "align --base {tmp}/missing --reward target:1,0 --out {tmp}/new",
    "adapt": "adapt --base {tmp}/missing --target moons --out {tmp}/new",
    "sample": "sample --model {tmp}/missing --out {tmp}/s.npy",
    "evaluate": "evaluate --model {tmp}/missing --json {tmp}/e.json",
}


def numeric_options():
    """(command, option, whole) for every int or float option of every command."""
    found = []
    for name, command in COMMANDS.items():
        for option in command.options():
            kind, _, _ = numeric_kind(option.kind)
            if kind is not None:
                found.append((name, option, kind is int))
    return found


def _bad_values(option, whole: bool) -> list[str]:
    """NaN, infinities, a whole number beyond 64 bits, and one value past each declared bound."""
    meta = option.spec.metadata
    values = ["nan", "inf", "-inf"]
    if whole:
        values.append(str(2**64))
    step = 1 if whole else 0.5
    if meta.get("ge") is not None:
        values.append(str(meta["ge"] - step))
    if meta.get("gt") is not None:
        values.append(str(meta["gt"]))
    if meta.get("le") is not None:
        values.append(str(meta["le"] + step))
    if meta.get("lt") is not None:
        values.append(str(meta["lt"]))
    return values


CASES = [(name, option.flag, value) for name, option, whole in numeric_options() for value in _bad_values(option, whole)]


def test_the_walk_sees_every_numeric_option():
    flags = {(name, option.flag) for name, option, _ in numeric_options()}
    for expected in [("pretrain", "--lr"), ("pretrain", "--seed"), ("pretrain", "--grad-clip"),
                     ("pretrain", "--weight-decay"), ("align", "--dual-lr"), ("align", "--alpha"), ("align", "--tau"),
                     ("adapt", "--eval-nfes"), ("sample", "--seed"), ("evaluate", "--nfe")]:
        assert expected in flags, expected
    assert {name for name, _ in flags} == set(MINIMAL)


@pytest.mark.parametrize("name,option", [(n, o) for n, o, _ in numeric_options()],
                         ids=[f"{n}{o.flag}" for n, o, _ in numeric_options()])
def test_every_numeric_option_declares_its_range(name, option):
    meta = option.spec.metadata
    assert any(meta.get(k) is not None for k in ("ge", "gt", "le", "lt")), \
        f"{name} {option.flag}: give its option() a range (ge/gt/le/lt)"


@pytest.mark.parametrize("command,flag,value", CASES, ids=[f"{c}{f}={v}" for c, f, v in CASES])
def test_a_bad_number_is_one_line_naming_the_option(command, flag, value, tmp_path):
    argv = MINIMAL[command].format(tmp=tmp_path).split() + [f"{flag}={value}"]
    proc = cli(*argv)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert flag in lines[0], lines[0]
    assert not (tmp_path / "new").exists() and not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("text,flag", [("lr: .nan", "--lr"), ("lr: nan", "--lr"), ("grad-clip: .inf", "--grad-clip"),
                                       ("seed: 18446744073709551616", "--seed"), ("seed: -1", "--seed"),
                                       ("weight_decay: -.inf", "--weight-decay"), ("sigma: -0.5", "--sigma")])
def test_a_bad_number_in_yaml_is_one_line_naming_the_option(text, flag, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {tmp_path}/missing.npy\n{text}\n")
    proc = cli("pretrain", "--config", str(config), "--out", str(tmp_path / "new"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    key = text.split(":")[0]  # the option named as the command line writes it, or as the YAML file does
    assert proc.returncode == 2 and len(lines) == 1 and (flag in lines[0] or f"'{key}'" in lines[0]), proc.stderr


def _settings_classes():
    return [TrainConfig, PretrainConfig, AlignConfig, AdaptConfig, SampleConfig, EvaluationConfig, DemoConfig,
            ReportConfig, ExportConfig]


def _numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, _, many = numeric_kind(hints[f.name])
        if kind is not None:
            yield f, kind, many


FIELD_CASES = [(cls, f.name, bad) for cls in _settings_classes() for f, kind, many in _numeric_fields(cls)
               for bad in ([float("nan"), float("inf")] + ([INT_LIMIT, 2.5, True] if kind is int else [-float("inf")]))]


@pytest.mark.parametrize("cls,name,bad", FIELD_CASES, ids=[f"{c.__name__}.{n}={b!r}" for c, n, b in FIELD_CASES])
def test_validate_names_every_numeric_field_that_is_not_finite_or_whole(cls, name, bad):
    """The Python settings, used without the CLI: ``validate()`` reports the field by its flag."""
    base = {"data": "moons"} if cls is PretrainConfig else {"base": "b", "reward": "r"} if cls is AlignConfig \
        else {"base": "b", "target": "moons"} if cls is AdaptConfig else {}
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = (bad,) if numeric_kind(typing.get_type_hints(cls)[name])[2] else bad
    problems = cls(**base, **{name: value}).validate()
    flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
    assert any(p.startswith(flag + " ") for p in problems), problems


def test_the_train_settings_of_a_method_are_checked_once():
    problems = AlignConfig(base="b", reward="r", train=TrainConfig(lr=float("nan"))).validate()
    assert [p for p in problems if p.startswith("--lr ")] == ["--lr must be > 0 (a finite number; got nan)"]


def test_good_values_pass():
    for cls in _settings_classes():
        base = {"data": "moons"} if cls is PretrainConfig else {"base": "b", "reward": "r"} if cls is AlignConfig \
            else {"base": "b", "target": "moons"} if cls is AdaptConfig else {}
        problems = cls(**base).validate()
        assert not [p for p in problems if "a finite number" in p or "a whole number" in p], (cls, problems)
    assert TrainConfig(seed=2**63 - 1, lr=1e-300, ema_decay=0.0).validate() == []
