"""Progress reporting: a bar on a terminal, plain log lines otherwise, nothing with ``quiet``."""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class Progress:
    """Reports training progress.

    Args:
        total: number of steps.
        mode: ``auto`` (bar when stderr is a terminal, else log lines),
            ``bar``, ``log`` or ``quiet``.
        desc: label shown before the bar or on each log line.
    """

    def __init__(self, total: int, *, mode: str = "auto", desc: str = "train", initial: int = 0) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.desc, self.total = mode, desc, total
        self._bar = None
        self._t0 = time.perf_counter()
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.mode == "bar" and self._bar is not None:
            self._bar.set_postfix_str(_fmt(metrics), refresh=False)
        elif self.mode == "log":
            elapsed = time.perf_counter() - self._t0
            print(f"[{self.desc}] step {step}/{self.total} {_fmt(metrics)} ({elapsed:.1f}s)", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
