"""When a benchmark may reuse a run folder it made before, instead of training it again.

The benchmarks (``even_digits.py``, ``mnist_paper.py``) keep each run in a folder named after its job, score a
finished one again and resume an interrupted one.  A folder name alone does not say how the run was made: a
run left by an older version of the script, or by the same script with other options, would be reported as
the job's.  So a folder is reused only when its ``config.json`` records every option the job passes.

Import it from a benchmark as ``from run_reuse import finished, refuse_another_run`` after putting this folder on
``sys.path`` (the scripts do so, so that a test that loads a script by its path finds it too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finished(run: Path) -> bool:
    """Whether ``run`` holds a finished run: trained to its own --steps (config.json's steps_done) and closed
    (final_metrics.json, which an align run writes after its last checkpoint; a pretrain run writes none, and
    its weights file then marks the end)."""
    try:
        config = json.loads((run / "config.json").read_text())
        closed = "model.safetensors" if config.get("method") == "pretrain" else "final_metrics.json"
        return config["steps_done"] >= config["settings"]["train"]["steps"] and (run / closed).is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _options(args: list[str]) -> dict[str, str | None]:
    """``["--alpha", "0.1", "--tau=5", "--quiet"]`` -> ``{"alpha": "0.1", "tau": "5", "quiet": None}`` (a flag
    without a value: None)."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected an option, got {flag!r} in {args}")
        if "=" in flag:  # --alpha=0.1
            name, value = flag.split("=", 1)
            out[name[2:].replace("-", "_")] = value
            i += 1
            continue
        has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        out[flag[2:].replace("-", "_")] = args[i + 1] if has_value else None
        i += 2 if has_value else 1
    return out


def _same(saved: Any, given: str | None, key: str) -> bool:
    if given is None:  # a switch: the saved setting must be on
        return saved is True
    if key == "base":
        return saved is not None and Path(str(saved)).resolve() == Path(given).resolve()
    if isinstance(saved, bool) or saved is None:
        return str(saved).lower() == given.lower()
    if isinstance(saved, (int, float)):
        try:
            return math.isclose(float(saved), float(given), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(saved) == given


def reuse_problems(run: Path, args: list[str], *, ignore: tuple[str, ...] = ("out", "resume", "quiet")) -> list[str]:
    """What keeps ``run`` from being the run ``flowsteer ... args`` makes: one line per option whose value differs
    from the one saved in its ``config.json`` (looked up in ``settings``, then ``settings.train``), or that the
    config does not record.  Empty when the run may be reused.  ``args`` are the command's options (no subcommand).
    """
    try:
        settings = json.loads((run / "config.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{run}/config.json cannot be read"]
    train = settings.get("train", {}) if isinstance(settings.get("train"), dict) else {}
    problems = []
    for key, given in _options(args).items():
        if key in ignore:
            continue
        where = settings if key in settings else train if key in train else None
        if where is None:
            problems.append(f"--{key.replace('_', '-')} is not recorded")
        elif not _same(where[key], given, key):
            problems.append(f"--{key.replace('_', '-')} was {where[key]!r}, the job gives {given!r}")
    return problems


def refuse_another_run(run: Path, args: list[str]) -> None:
    """Stop the benchmark with one line when ``run`` holds a run that ``flowsteer ... args`` did not make (see
    :func:`reuse_problems`); an empty or missing folder passes."""
    problems = reuse_problems(run, args) if (run / "config.json").is_file() else []
    if problems:  # a folder of another command is neither scored as the job's nor resumed
        raise SystemExit(f"{run} holds a run made with other options ({'; '.join(problems)}); "
                         "choose a new --out, or move that folder away")
