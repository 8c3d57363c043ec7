"""Which folders flowsteer writes, and one writer at a time.

A command that writes a folder (the ``--out`` of pretrain, align, adapt, an align sweep, report and demo)
takes it only when

* it does not exist (it is created), or it is empty (it is adopted);
* or flowsteer made it for the same kind of work: a training run only with ``--resume`` (which continues
  it), a report or a demo folder always (they are rewritten in place).

Anything else is refused before anything is written, and the refusal never advises ``--resume`` for a
folder that ``--resume`` would not continue: a folder of another command (the pretrained base given as
an align ``--out``), files flowsteer did not write (a diffusers model, a home folder), a folder inside a
run folder, and the command's own ``--base``.

What a folder was made for is recorded when it is made, in ``OWNER_FILE``; folders written before that
file existed are recognised by ``config.json`` (format tag and method), ``sweep.json`` (a sweep),
``summary.json`` (a demo) or an ``index.html`` that ``flowsteer report`` wrote.  While a command writes a folder
it holds an exclusive ``flock`` on ``LOCK_FILE`` inside it, for the command's life; a second command on
the same folder is refused with the first one's pid.  Under ``accelerate launch`` every rank checks the
folder and rank 0 alone takes it.  Taking a folder that holds a killed writer's temporaries
(``.checkpoint-STEP.*.tmp``, atomic writes' ``.NAME.*.tmp*``, ``.NAME.*.export-tmp``) removes them.

Output files (``sample --out``, ``evaluate --json``) are never written onto a folder or inside a folder
flowsteer made, with one exception: ``evaluate --json RUN/evaluation.json`` for the ``--model`` run
itself, which is where ``flowsteer report`` reads a run's evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Collection, Iterator

from . import __version__
from .distributed import Distributed
from .errors import ConfigError, FlowsteerError, RunFolderError
from .io import atomic_write_json, disk_errors
from .checkpoints import resolve_checkpoint
from .runs import (CONFIG_FILE, EVALUATION_FILE, LATEST_FILE, LOCK_FILE, OWNER_FILE, REPORT_IMAGES, REPORT_PAGE,
                   RUN_FORMAT, SUMMARY_FILE, SWEEP_FILE, TEMP_SUFFIXES, WEIGHTS_FILE)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

RUN_KINDS = ("pretrain", "align", "adapt")
SWEEP, REPORT, DEMO = "align-sweep", "report", "demo"
REWRITTEN = (REPORT, DEMO)  # taken again without --resume: their command rewrites them
CONTAINS = {SWEEP: ("align",), DEMO: (*RUN_KINDS, SWEEP, REPORT)}  # what may be made inside a folder of a kind


def describe(kind: str) -> str:
    """``a pretrain run``, ``an align sweep``, ``a report``."""
    name = {SWEEP: "align sweep", REPORT: "report", DEMO: "demo folder"}.get(kind, f"{kind} run")
    return ("an " if name[0] in "aeiou" else "a ") + name


def is_temporary(name: str) -> bool:
    """A temporary of an atomic write, a checkpoint folder or an export (``.NAME.*.tmp*``, ``.NAME.*.export-tmp``)."""
    return name.startswith(".") and (name.endswith(TEMP_SUFFIXES) or ".tmp." in name)


def _entries(folder: Path) -> list[Path]:
    """What a folder holds besides its bookkeeping (the owner record and the lock)."""
    try:
        return [p for p in folder.iterdir() if p.name not in (OWNER_FILE, LOCK_FILE)]
    except OSError:
        return []


def folder_kind(folder: Path) -> str | None:
    """What flowsteer made ``folder`` for (a run kind, ``align-sweep``, ``report``, ``demo``), or None."""
    marker = folder / OWNER_FILE
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if isinstance(kind, str) else "damaged"
    try:  # a run from before the owner record: its config's format tag, beside weights or a checkpoint
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if isinstance(config, dict) and config.get("format") == RUN_FORMAT and \
                ((folder / WEIGHTS_FILE).is_file() or (folder / LATEST_FILE).is_file()):
            return str(config.get("method"))
    except (OSError, ValueError):
        pass
    if "points" in _json_keys(folder / SWEEP_FILE):
        return SWEEP
    if {"fast", "report"} <= _json_keys(folder / SUMMARY_FILE):
        return DEMO
    try:  # a report page says who wrote it
        page = (folder / REPORT_PAGE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return REPORT if "flowsteer report" in page else None


def _json_keys(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def owner_of(path: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` that flowsteer made, and its kind."""
    for parent in Path(os.path.abspath(path)).resolve().parents:
        kind = folder_kind(parent)
        if kind is not None:
            return parent, kind
    return None


def _base_folder(base: str | None) -> Path | None:
    if not base:
        return None
    return Path(os.path.abspath(base.removeprefix("diffusers:"))).resolve()


def _check_folder(out: Path, kind: str, *, resume: str | bool | None = None, base: str | None = None,
                  legacy: Collection[str] = (), locked: bool = False) -> None:
    """Raise a one-line :class:`ConfigError` unless a ``kind`` command may write the folder ``out``.

    ``base``: the command's ``--base`` (never written); ``legacy``: names whose presence alone marks a
    folder made for ``kind`` before ``OWNER_FILE`` existed.  Reads only; writes nothing.
    """
    where = repr(str(out))
    if out.is_symlink() and not out.is_dir() or out.exists() and not out.is_dir():
        raise ConfigError(f"--out {where} is a file; choose a folder")
    resolved, base_dir = Path(os.path.abspath(out)).resolve(), _base_folder(base)
    # inside the base: a diffusers model folder or a run (a --base that is neither gets its own error later)
    inside = base_dir is not None and base_dir in resolved.parents and \
        (str(base).startswith("diffusers:") or folder_kind(base_dir) is not None)
    if base_dir is not None and resolved == base_dir or inside:
        what = "is the --base itself" if resolved == base_dir else "lies inside the --base folder"
        raise ConfigError(f"--out {where} {what}; a fine-tuned run gets a folder of its own and the base stays as "
                          "it is: choose a new or empty folder for --out")
    owner = owner_of(out)
    if owner is not None and kind not in CONTAINS.get(owner[1], ()):
        raise ConfigError(f"--out {where} lies inside {describe(owner[1])} of flowsteer ({str(owner[0])!r}), whose "
                          "files only its own command writes; choose a folder outside it")
    if not locked:  # a live writer first: its folder may look half-made to the checks below
        _refuse_if_being_written(out)
    entries = _entries(out)
    if not entries:
        if resume:
            raise ConfigError(f"--resume: {where} has no checkpoint to resume from; drop --resume to start the run "
                              "again (pass --checkpoint-every N to checkpoint during training)")
        return
    found = folder_kind(out)
    if found is None and legacy and {p.name for p in entries} <= set(legacy) and \
            all(folder_kind(p) is not None for p in entries if p.is_dir()):
        found = kind  # an older folder of this command: every sub-folder in it is flowsteer's too
    if found == kind and kind in REWRITTEN:
        return
    if found == kind and kind in RUN_KINDS:
        if resolve_checkpoint(out) is None and (out / WEIGHTS_FILE).is_file():
            raise ConfigError(f"--out {where} holds {describe(kind)} with no checkpoint left to resume from; choose "
                              "a new or empty folder for --out")
        if resolve_checkpoint(out) is None:
            raise ConfigError(f"--out {where} holds {describe(kind)} that stopped before its first checkpoint, so "
                              "there is nothing to resume; delete that folder to start again, or choose a new or "
                              "empty folder for --out")
        if resume:
            return
        raise ConfigError(f"--out {where} already holds a run of flowsteer {kind}; pass --resume to continue it, "
                          "or choose a new or empty folder for --out")
    if found == kind:  # a sweep: its runs resume one at a time
        raise ConfigError(f"--out {where} already holds an align sweep; choose a new or empty folder for --out (a "
                          f"sweep's runs resume one at a time: --out {out / 'alpha-A'} --resume)")
    if found is not None:
        raise ConfigError(f"--out {where} holds {describe(found)} of flowsteer, not {describe(kind)}; a folder is "
                          "written only by the command that made it: choose a new or empty folder for --out")
    names = sorted(p.name for p in entries)
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    raise ConfigError(f"--out {where} is a folder flowsteer did not create (it holds {shown}); choose a new or "
                      "empty folder for --out - nothing was written")


def check_folder(out: Path, kind: str, *, resume: str | bool | None = None, base: str | None = None,
                 legacy: Collection[str] = (), locked: bool = False) -> None:
    """Raise a one-line error unless a ``kind`` command may write the folder ``out`` (:func:`_check_folder`);
    a path the system cannot even look at (a name too long, a file where a folder should be) is one line too.
    ``locked``: this process holds the folder's lock (so it does not probe it)."""
    with disk_errors(out):
        _check_folder(out, kind, resume=resume, base=base, legacy=legacy, locked=locked)


def check_output_file(path: Path, flag: str, *, model: str | None = None) -> None:
    """One line unless ``path`` may be written (:func:`_check_output_file`)."""
    with disk_errors(path):
        _check_output_file(path, flag, model=model)


def _check_output_file(path: Path, flag: str, *, model: str | None = None) -> None:
    """Raise a one-line :class:`ConfigError` if writing the file ``path`` would replace a folder or land inside
    a folder flowsteer made; ``model``: evaluate's ``--model``, whose ``RUN/evaluation.json`` may be written."""
    where = repr(str(path))
    if path.is_dir():
        raise ConfigError(f"{flag} {where} is a folder; give a file name (nothing was written)")
    owner = owner_of(path)
    if owner is None:
        return
    folder, kind = owner
    if model is not None and kind in RUN_KINDS and path.name == EVALUATION_FILE and \
            Path(os.path.abspath(path)).resolve().parent == folder and _base_folder(model) == folder:
        return
    allowed = f" (the one file written into a run is {EVALUATION_FILE} of the --model run)" if model is not None else ""
    raise ConfigError(f"{flag} {where} lies inside {describe(kind)} of flowsteer ({str(folder)!r}), whose files only "
                      f"its own command writes; write it outside that folder{allowed} - nothing was written")


def check_outside_owned(path: Path, flag: str = "--out") -> None:
    """Raise a one-line :class:`ConfigError` if ``path`` lies inside a folder flowsteer made (export's --out)."""
    owner = owner_of(path)
    if owner is not None:
        raise ConfigError(f"{flag} {str(path)!r} lies inside {describe(owner[1])} of flowsteer ({str(owner[0])!r}), "
                          "whose files only its own command writes; choose a new or empty folder outside it")


def remove_temporaries(folder: Path) -> list[str]:
    """Delete what killed writers left in ``folder`` (and its ``img/``); returns the names removed."""
    removed = []
    for where in (folder, folder / REPORT_IMAGES):
        for path in (where.iterdir() if where.is_dir() else ()):
            if is_temporary(path.name) and path.name not in (OWNER_FILE, LOCK_FILE):
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    removed.append(path.name)
    return removed


class Claim:
    """A folder this process writes, with its lock held until :meth:`release`."""

    def __init__(self, path: Path, fd: int, *, fresh: bool, created: bool) -> None:
        self.path, self._fd, self.fresh, self.created = path, fd, fresh, created

    def release(self) -> None:
        """Drop the lock; a folder taken fresh that nothing was written into is left as it was found."""
        if self._fd is None:
            return
        try:
            if self.fresh and not _entries(self.path):
                for name in (OWNER_FILE, LOCK_FILE):
                    with contextlib.suppress(OSError):
                        (self.path / name).unlink()
                if self.created:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()
        finally:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote into the lock file (it may still be writing it)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"


def _refuse_if_being_written(folder: Path) -> None:
    """One line naming the pid when another process holds ``folder``'s lock (probed, not taken)."""
    path = folder / LOCK_FILE
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise RunFolderError(f"--out {str(folder)!r} is being written by another flowsteer process (pid "
                             f"{_holder(fd)}); wait for it to finish or stop it, or choose another --out") from None
    finally:
        os.close(fd)


def _lock(folder: Path) -> int:
    """An fd of ``folder/LOCK_FILE`` holding an exclusive flock, or a one-line error naming the holder's pid."""
    path = folder / LOCK_FILE
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise RunFolderError(f"--out {str(folder)!r} is being written by another flowsteer process (pid {pid}); "
                                 "wait for it to finish or stop it, or choose another --out") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file as we opened it: lock the one there now
    raise RunFolderError(f"--out {str(folder)!r}: cannot take its lock {LOCK_FILE}; run the command again")


def _take(out: Path, kind: str, *, resume: str | bool | None, base: str | None, legacy: Collection[str]) -> Claim:
    created = not out.exists()
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        fd = _lock(out)
    claim = Claim(out, fd, fresh=False, created=created)
    try:
        check_folder(out, kind, resume=resume, base=base, legacy=legacy, locked=True)  # again, now it is ours
        claim.fresh = not _entries(out)
        with disk_errors(out):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            if claim.fresh or folder_kind(out) != kind or not (out / OWNER_FILE).is_file():
                atomic_write_json(out / OWNER_FILE, {"kind": kind, "made_by": f"flowsteer {__version__}"})
        if not claim.fresh:
            remove_temporaries(out)
    except BaseException:
        claim.release()
        raise
    return claim


@contextlib.contextmanager
def claim_folder(out: str | os.PathLike[str], kind: str, *, resume: str | bool | None = None,
                 base: str | None = None, legacy: Collection[str] = (),
                 dist: Distributed | None = None) -> Iterator[Claim | None]:
    """Check (:func:`check_folder`) and take ``out`` for a ``kind`` command for the block: created or adopted
    and recorded, locked, its stale temporaries removed.  With several processes every rank checks and
    rank 0 alone takes it (the others get None); a refusal on any rank is raised on all of them."""
    out, dist = Path(out), dist or Distributed()
    problem: FlowsteerError | None = None
    try:
        check_folder(out, kind, resume=resume, base=base, legacy=legacy)
    except FlowsteerError as exc:
        problem = exc
    if dist.enabled:
        told = [p for p in dist.gather_object(None if problem is None else str(problem)) if p]
        problem = problem or (ConfigError(told[0]) if told else None)
    if problem is not None:
        raise problem
    claim = None
    if dist.is_main:
        try:
            claim = _take(out, kind, resume=resume, base=base, legacy=legacy)
        except FlowsteerError as exc:
            problem = exc
    if dist.enabled:
        told = dist.gather_object(None if problem is None else str(problem))[0]
        problem = problem or (RunFolderError(told) if told else None)
    if problem is not None:
        raise problem
    try:
        yield claim
    finally:
        if claim is not None:
            claim.release()
