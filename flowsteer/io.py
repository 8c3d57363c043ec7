"""Atomic file writes: a crash never leaves a half-written file behind.

Every writer goes to a temporary file in the destination folder, flushes and
fsyncs it, then ``os.replace`` s it onto the final name (atomic on POSIX).  The
file gets the mode a plain ``open`` would give it (``0o666`` less the umask), not
``mkstemp``'s 0600.  A full disk or a folder that cannot be written (ENOSPC, EDQUOT,
EROFS, EACCES, EPERM) becomes a one-line :class:`~flowsteer.errors.WriteError`;
the file that was there stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import FlowsteerError, WriteError

# what a full disk or an unwritable target raises; anything else is a bug and keeps its traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# ... and what names a path that cannot be written to (a folder, a file where a folder should be)
PATH_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST}
_WHY = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
        errno.EPERM: "permission denied", errno.EISDIR: "it is a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder", errno.ENAMETOOLONG: "the name is too long",
        errno.EEXIST: "a part of the path is a file, not a folder"}


def umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread sees a changed mask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: 0o666 less the umask."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode ``mkdir`` would create a folder with: 0o777 less the umask."""
    return 0o777 & ~umask()


def disk_problem(exc: BaseException, path: str | os.PathLike[str]) -> WriteError | None:
    """The one-line :class:`WriteError` for a full disk or an unwritable ``path``, or None for other errors.

    Libraries that write through their own code (safetensors, torch) report a full disk in their own
    exception types; a folder whose file system has no free block left counts as full whatever the type.
    """
    seen: BaseException | None = exc
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in DISK_ERRNOS | PATH_ERRNOS):
        seen = seen.__cause__ or seen.__context__
    code = seen.errno if isinstance(seen, OSError) else None
    if code is None:
        try:
            folder = Path(path) if Path(path).is_dir() else Path(path).parent
            stats = os.statvfs(folder)
            code = errno.ENOSPC if stats.f_blocks > 0 and stats.f_bavail == 0 else None
        except OSError:
            code = None
    if code is None:
        return None
    if code in PATH_ERRNOS:
        return WriteError(f"cannot write {str(path)!r}: {_WHY[code]}; choose another path (nothing was replaced)")
    fix = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return WriteError(f"cannot write {str(path)!r}: {_WHY[code]}; {fix} or choose another folder, then run the "
                      "command again (the files already there are unchanged)")


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk or an unwritable ``path`` inside the block into a :class:`WriteError`."""
    try:
        yield
    except FlowsteerError:  # already a one-line error
        raise
    except Exception as exc:
        problem = disk_problem(exc, path)
        if problem is None:
            raise
        raise problem from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file keeps ``path``'s suffix so that libraries choosing a
    format by extension (matplotlib, numpy) behave as for the real name.
    """
    final = Path(path)
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
        )
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_errors(final):
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fchmod(handle.fileno(), file_mode())
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
    """Append one JSON line (one unbuffered write); a write that fails leaves the file as it was."""
    data = json_text(record, indent=None).encode("utf-8")
    with disk_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no half line left behind
                raise
        finally:
            os.close(fd)
