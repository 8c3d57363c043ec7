"""Atomic file writes: a crash never leaves a half-written file behind.

Every writer goes to a temporary file in the destination folder, flushes and
fsyncs it, then ``os.replace`` s it onto the final name (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file keeps ``path``'s suffix so that libraries choosing a
    format by extension (matplotlib, numpy) behave as for the real name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None (JSON has no such numbers; null means "not
    measured or not finite"), tuples as lists, and numpy / torch scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """Sorted-key JSON of :func:`json_safe` ``(obj)`` with a final newline; never a bare NaN."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line (a single ``write`` call, flushed)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json_text(record, indent=None))
        handle.flush()
