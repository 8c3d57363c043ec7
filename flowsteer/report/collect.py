"""Which runs a report shows: run folders, sweep folders, and folders holding them (see :mod:`flowsteer.report`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunFolderError
from ..runs import CONFIG_FILE, EVALUATION_FILE, FINAL_METRICS_FILE, SWEEP_FILE, read_config


@dataclass
class ReportRun:
    """One run folder as the report sees it."""

    path: Path
    label: str
    config: dict[str, Any]
    final: dict[str, Any]
    evaluation: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def base(self) -> Path | None:
        base = self.config.get("base")
        return Path(base) if base else None

    def describe(self) -> str:
        s = self.config.get("settings", {})
        if self.method == "align":  # the method's own knob: alpha (as it ended), kl_beta (flow-grpo), nft_beta (nft)
            knob = {"flow-grpo": "kl_beta", "nft": "nft_beta", "rwr": "tau", "raft": "raft_fraction"}.get(
                str(s.get("method")), "alpha")
            value = self.final.get("final_alpha", s.get("alpha")) if knob == "alpha" else s.get(knob)
            if not isinstance(value, (int, float)):
                return str(s.get("method"))
            w2 = f", alpha={self.final.get('final_alpha', s.get('alpha')):g}" \
                if knob in ("tau", "raft_fraction") and s.get("w2") else ""  # rwr/raft with the W2 term
            pool = f", pool={s['rollout_pool']}" if isinstance(s.get("rollout_pool"), int) and s["rollout_pool"] else ""
            if isinstance(s.get("target_beta"), (int, float)):  # orw aimed at q0 exp(r / beta) (Theorem 2)
                anchor = s.get("anchor_share")
                return (f"{s.get('method', 'align')}, target_beta={s['target_beta']:g}, tau={s.get('tau', 0):g}"
                        + (f", anchor={anchor:g}" if isinstance(anchor, (int, float)) and anchor > 0 else "") + pool)
            return f"{s.get('method', 'align')}, {knob}={value:g}{w2}{pool}"
        if self.method == "adapt":
            return f"{s.get('method', 'adapt')} / {s.get('coupling', '?')}"
        return f"pretrain on {self.config.get('data', {}).get('spec', '?')}"


@dataclass
class ReportSweep:
    path: Path
    label: str
    summary: dict[str, Any]
    runs: list[ReportRun] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunFolderError(f"{path}: not valid JSON; re-create it (e.g. re-run flowsteer evaluate)") from None
    return data if isinstance(data, dict) else None


def _load(path: Path, label: str) -> ReportRun:
    config = read_config(path)
    final = _read_json(path / FINAL_METRICS_FILE) or config.get("final") or {}
    return ReportRun(path=path, label=label, config=config, final=final, evaluation=_read_json(path / EVALUATION_FILE))


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def expand_folders(paths: list[Path]) -> list[Path]:
    """Each path as given if it is a run or sweep folder; a folder holding runs becomes its run and sweep
    sub-folders (sorted by name; a sweep's own runs stay inside the sweep, and anything else - such as a
    report folder written earlier - is skipped)."""
    out: list[Path] = []
    for path in paths:
        if _is_run(path) or (path / SWEEP_FILE).is_file() or not path.is_dir():
            out.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (_is_run(p) or (p / SWEEP_FILE).is_file()))
        if not inner:
            raise RunFolderError(f"{str(path)!r} is neither a run folder (config.json) nor a sweep folder (sweep.json), "
                                 "and holds none; pass folders written by flowsteer pretrain, align or adapt")
        out.extend(inner)
    return out


def default_report_out(paths: list[Path]) -> Path:
    """Where ``flowsteer report`` writes without ``--out``: ``FOLDER/report`` for one folder of runs (as the demo
    does), else ``./report``."""
    if len(paths) == 1 and paths[0].is_dir() and not _is_run(paths[0]) and not (paths[0] / SWEEP_FILE).is_file():
        return paths[0] / "report"
    return Path("report")


def collect_runs(paths: list[Path]) -> tuple[list[ReportRun], list[ReportSweep]]:
    """Resolve the command line's folders into runs and sweeps (a sweep's runs are runs too; a folder of runs
    is expanded by :func:`expand_folders`)."""
    paths = expand_folders(paths)
    runs: list[ReportRun] = []
    sweeps: list[ReportSweep] = []
    names = [p.resolve().name for p in paths]
    for path, name in zip(paths, names):
        label = name if names.count(name) == 1 else f"{path.resolve().parent.name}/{name}"
        if (path / SWEEP_FILE).is_file():
            summary = _read_json(path / SWEEP_FILE) or {}
            sweep = ReportSweep(path=path, label=label, summary=summary)
            for point in summary.get("points", []):
                sub = Path(point.get("run", ""))
                sub = sub if sub.is_dir() else path / sub.name
                if (sub / CONFIG_FILE).is_file():
                    sweep.runs.append(_load(sub, f"{label}/{sub.name}"))
            sweeps.append(sweep)
            runs.extend(sweep.runs)
        elif _is_run(path):
            runs.append(_load(path, label))
        else:
            raise RunFolderError(f"{str(path)!r} is neither a run folder (config.json) nor a sweep folder (sweep.json); "
                                 "pass folders written by flowsteer pretrain, align or adapt")
    return runs, sweeps
