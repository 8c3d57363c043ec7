"""Issue 14, "nothing lost": run-folder ownership, the --out lock, a full or read-only disk, stale
temporaries and the umask (flowsteer/ownership.py, flowsteer/io.py).  The cases that fit the CLI table
are in tests/test_bad_inputs.py (block "issue 14"); these need a second process, a failing disk or a
run made through the CLI (which records its owner)."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, cli_env
from test_cli import assert_user_error
from flowsteer.distributed import Distributed
from flowsteer.errors import FlowsteerError
from flowsteer.ownership import claim_folder, is_temporary
from flowsteer.runs import FINAL_METRICS_FILE, LOCK_FILE, OWNER_FILE

FAST_PRETRAIN = ["pretrain", "--data", "moons", "--steps", "30", "--batch-size", "64", "--checkpoint-every", "10",
                 "--log-every", "10", "--quiet"]
MOONS_RUN = ["pretrain", "--data", "moons", "--steps", "300", "--log-every", "50", "--quiet"]  # as conftest's moons_run


def _digest(folder: Path, *, skip_temporaries: bool = False) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (skip_temporaries and any(is_temporary(part) for part in p.parts))}


def _temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if is_temporary(p.name)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A pretrain run made through the CLI: it records its owner, and has checkpoints."""
    out = tmp_path_factory.mktemp("own") / "run"
    proc = cli(*FAST_PRETRAIN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / OWNER_FILE).read_text())["kind"] == "pretrain"
    return out


# ----------------------------------------------------------------------------- ownership (runs the CLI made)

@pytest.mark.parametrize("argv, fragment, forbidden", [
    ("align --base {run} --reward target:1,0 --out {run} --resume", "is the --base itself", "--resume"),
    ("align --base {run} --reward target:1,0 --out {run}", "is the --base itself", "--resume"),
    ("adapt --base {other} --target moons --out {run} --resume", "not an adapt run", "--resume"),
    ("align --base {other} --reward target:1,0 --out {run}/sub", "lies inside a pretrain run", "--resume"),
    ("pretrain --data moons --out {run}", "already holds a run", None),  # same command: --resume is the safe advice
    ("report {other} --out {run}", "not a report", "--resume"),
    ("sample --model {run} --n 4 --out {run}/samples.npy", "lies inside a pretrain run", None),
    ("evaluate --model {other} --json {run}/evaluation.json", "of the --model run", None),
    ("export {run} --out {run}/export", "lies inside a pretrain run", None),
], ids=["base-resume", "base", "other-command", "inside", "same-command", "report", "sample", "evaluate", "export"])
def test_a_run_folder_is_written_only_by_its_own_command(argv, fragment, forbidden, cli_run, moons_run):
    before = _digest(cli_run)
    proc = cli(*argv.format(run=cli_run, other=moons_run).split())
    assert_user_error(proc, fragment)
    if forbidden:
        assert forbidden not in proc.stderr.split(";", 1)[1], proc.stderr  # the advice never leads back in
    assert _digest(cli_run) == before


def test_an_align_run_is_not_resumed_as_its_own_base(cli_run, tmp_path):
    """Same command, --resume, a checkpoint: everything a resume wants - but the folder is also the --base."""
    run = tmp_path / "aligned"
    shutil.copytree(cli_run, run)
    (run / OWNER_FILE).write_text('{"kind": "align"}\n')
    before = _digest(run)
    assert_user_error(cli("align", "--base", str(run), "--reward", "target:1,0", "--out", str(run), "--resume"),
                      "is the --base itself")
    assert_user_error(cli("align", "--base", str(run), "--reward", "target:1,0", "--out", str(run / "sub")),
                      "lies inside the --base folder")
    assert _digest(run) == before


def test_a_failed_command_leaves_no_folder_behind_and_an_empty_one_empty(tmp_path):
    np_bad = tmp_path / "nan.npy"  # the command fails after the folder is taken
    np.save(np_bad, np.array([[0.0, 1.0], [np.nan, 2.0]] * 20, dtype=np.float32))
    assert cli("pretrain", "--data", str(np_bad), "--out", str(tmp_path / "new")).returncode == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert cli("pretrain", "--data", str(np_bad), "--out", str(tmp_path / "empty")).returncode == 2
    assert list((tmp_path / "empty").iterdir()) == []


def test_evaluate_may_write_the_model_runs_own_evaluation_json(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    proc = cli("evaluate", "--model", str(run), "--n", "64", "--nfe", "2", "--json", str(run / "evaluation.json"))
    assert proc.returncode == 0, proc.stderr
    assert "metrics" in json.loads((run / "evaluation.json").read_text())


# ----------------------------------------------------------------------------- one writer at a time

HOLD = """import sys
from flowsteer.ownership import claim_folder
with claim_folder(sys.argv[1], "pretrain", resume=sys.argv[2] or None):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-run", "resume"])
def test_a_second_writer_of_the_same_out_is_refused_with_the_first_ones_pid(existing, moons_run, tmp_path):
    out = tmp_path / "run"
    if existing:
        shutil.copytree(moons_run, out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "auto" if existing else ""], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _digest(tmp_path)
        argv = [*MOONS_RUN, "--resume"] if existing else FAST_PRETRAIN
        proc = cli(*argv, "--out", str(out))
        assert_user_error(proc, f"pid {holder.pid}", "another flowsteer process")
        assert _digest(tmp_path) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the lock goes with its holder: now the folder can be written
    argv = [*MOONS_RUN, "--resume"] if existing else FAST_PRETRAIN
    proc = cli(*argv, "--out", str(out))
    assert proc.returncode == 0, proc.stderr


def test_the_lock_is_held_for_the_block_and_released_after(tmp_path):
    out = tmp_path / "r"
    with claim_folder(out, "pretrain") as claim:
        assert claim is not None and (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(Exception, match=f"pid {os.getpid()}"):
            with claim_folder(out, "pretrain"):
                pass
    assert not out.exists()  # nothing was written into it: left as it was found
    with claim_folder(out, "pretrain"):
        (out / "x").write_text("x")
    assert (out / "x").is_file() and json.loads((out / OWNER_FILE).read_text())["kind"] == "pretrain"


class _Rank(Distributed):
    """Rank ``rank`` of 2, whose ``gather_object`` answers with the scripted lists (the other rank's words)."""

    def __init__(self, rank: int, answers: list[list]) -> None:
        super().__init__(rank=rank, world_size=2)
        self.answers, self.sent = answers, []

    def gather_object(self, obj):
        self.sent.append(obj)
        return self.answers.pop(0)


def test_under_several_processes_rank_0_alone_takes_the_folder_and_a_refusal_reaches_every_rank(tmp_path):
    out = tmp_path / "r"
    rank1 = _Rank(1, [[None, None], [None, None]])
    with claim_folder(out, "align", dist=rank1) as claim:
        assert claim is None and not out.exists()  # rank 1 checks, writes nothing
    assert rank1.sent == [None, None]
    busy = "--out 'r' is being written by another flowsteer process (pid 7); wait for it to finish"
    with pytest.raises(FlowsteerError, match=r"pid 7"):
        with claim_folder(out, "align", dist=_Rank(1, [[None, None], [busy, None]])):
            pass
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x.txt").write_text("x")
    rank0 = _Rank(0, [["refused on rank 0", "refused on rank 1"]])
    with pytest.raises(FlowsteerError, match="did not create"):  # rank 0 raises its own reason, never takes it
        with claim_folder(tmp_path / "f", "align", dist=rank0):
            pass
    assert "did not create" in rank0.sent[0] and sorted(p.name for p in (tmp_path / "f").iterdir()) == ["x.txt"]


# ----------------------------------------------------------------------------- a full or read-only disk

def _failing_replace(monkeypatch, should_fail, folder: Path, seen: dict):
    """``os.replace`` that raises ENOSPC where ``should_fail(dst)``; records the folder's files at that moment."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if should_fail(Path(dst)):
            seen.setdefault("files", _digest(folder, skip_temporaries=True))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("stage", ["start", "checkpoint", "end"])
def test_a_full_disk_gives_one_line_and_keeps_the_old_files(stage, moons_run, tmp_path, monkeypatch):
    """At the start (the first write of a resumed run), at a checkpoint (the second one of a new run) and at the
    end (align's final metrics): exit 2, one line, every file as it was when the write failed, no temporaries."""
    out, seen = tmp_path / "run", {}
    if stage == "start":
        shutil.copytree(moons_run, out)
        seen["files"] = _digest(out)
        _failing_replace(monkeypatch, lambda dst: True, out, seen)
        argv = [*MOONS_RUN, "--resume", "--out", str(out)]
    elif stage == "checkpoint":
        _failing_replace(monkeypatch, lambda dst: dst.parent.name.startswith(".checkpoint-20."), out, seen)
        argv = [*FAST_PRETRAIN, "--out", str(out)]
    else:
        _failing_replace(monkeypatch, lambda dst: dst.name == FINAL_METRICS_FILE, out, seen)
        argv = ["align", "--base", str(moons_run), "--reward", "target:1,0", "--steps", "4", "--batch-size", "16",
                "--eval-samples", "16", "--eval-steps", "2", "--rollout-steps", "2", "--checkpoint-every", "2",
                "--log-every", "2", "--quiet", "--out", str(out)]
    proc = cli(*argv)
    monkeypatch.undo()
    assert_user_error(proc, "no space left on the device", str(out))
    assert "files" in seen, "the failing write was never reached"
    after = _digest(out)
    assert {name: after.get(name) for name in seen["files"]} == seen["files"]
    assert set(after) - set(seen["files"]) <= {LOCK_FILE, OWNER_FILE}  # at most the bookkeeping of the start
    assert _temporaries(out) == []
    if stage == "checkpoint":
        assert (out / "latest").read_text().strip() == "checkpoint-10"
        assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-10" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "the file system is read-only"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.EDQUOT, "the disk quota is used up")])
def test_a_read_only_or_full_target_is_named_as_such(code, words, moons_run, tmp_path, monkeypatch):
    """What a read-only folder raises, simulated for root (which writes anyway): one line, files untouched."""
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    before = _digest(out)

    def replace(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", replace)
    proc = cli(*MOONS_RUN, "--resume", "--out", str(out))
    monkeypatch.undo()
    assert_user_error(proc, words)
    after = _digest(out)
    assert {name: after.get(name) for name in before} == before and set(after) - set(before) <= {LOCK_FILE}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the ENOSPC test covers the path")
def test_a_read_only_run_folder_gives_one_line(moons_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    before = _digest(out)
    out.chmod(0o555)
    try:
        proc = cli(*MOONS_RUN, "--resume", "--out", str(out))
    finally:
        out.chmod(0o755)
    assert_user_error(proc, "permission denied")
    assert _digest(out) == before


def test_an_appended_metrics_line_that_fails_leaves_no_half_line(tmp_path, monkeypatch):
    from flowsteer.errors import WriteError
    from flowsteer.io import append_jsonl

    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    real = os.write

    def write(fd, data):
        real(fd, bytes(data)[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(WriteError, match="no space left"):
        append_jsonl(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


# ----------------------------------------------------------------------------- stale temporaries, umask

def test_a_resumed_run_removes_what_a_killed_writer_left(moons_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    stale = [".checkpoint-400.k3j2.tmp", ".model.a8f.tmp.safetensors", ".config.x1.tmp.json", ".latest.q9.tmp",
             ".diffusers.z2.export-tmp"]
    (out / stale[0]).mkdir()
    (out / stale[0] / "model.safetensors").write_bytes(b"half")
    (out / stale[-1]).mkdir()
    for name in stale[1:-1]:
        (out / name).write_bytes(b"half")
    (out / ".notes").write_text("mine\n")  # not a temporary: stays
    proc = cli(*MOONS_RUN, "--resume", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _temporaries(out) == [] and (out / ".notes").read_text() == "mine\n"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_and_folders_follow_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        run = tmp_path / "run"
        for argv in ([*FAST_PRETRAIN, "--out", str(run)],
                     ["sample", "--model", str(run), "--n", "8", "--steps", "2", "--out", str(tmp_path / "s.npy")],
                     ["evaluate", "--model", str(run), "--n", "64", "--nfe", "2", "--json", str(run / "evaluation.json")],
                     ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"]):
            proc = cli(*argv)
            assert proc.returncode == 0, proc.stderr
    finally:
        os.umask(old)
    paths = [run, tmp_path / "report", *run.rglob("*"), *(tmp_path / "report").rglob("*"), tmp_path / "s.npy"]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in paths}
    want = {str(p.relative_to(tmp_path)): oct((0o777 if p.is_dir() else 0o666) & ~mask) for p in paths}
    assert modes == want
    assert any(p.is_dir() for p in run.glob("checkpoint-*")) and (run / OWNER_FILE).is_file()


HOLD_WRITING = """import sys
from pathlib import Path
from flowsteer.ownership import claim_folder
with claim_folder(sys.argv[1], "pretrain"):
    (Path(sys.argv[1]) / "metrics.jsonl").write_text('{"step": 50, "kind": "train", "loss": 1.0}\\n')
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_live_run_with_no_checkpoint_yet_is_named_by_pid_not_called_dead(tmp_path):
    """A running pretrain (no checkpoint until it ends, but metrics already logged) must not be described as a run
    that stopped before its first checkpoint - that message says to delete the folder."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITING, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _digest(tmp_path)
        for extra in ([], ["--resume"]):
            proc = cli(*FAST_PRETRAIN, *extra, "--out", str(out))
            assert_user_error(proc, f"pid {holder.pid}", "another flowsteer process")
            assert "delete" not in proc.stderr
        assert _digest(tmp_path) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_the_demo_never_replaces_a_users_folder_named_like_one_of_its_runs(tmp_path):
    out = tmp_path / "mine"
    (out / "pretrain-digits").mkdir(parents=True)
    (out / "pretrain-digits" / "notes.txt").write_text("precious\n")
    before = _digest(tmp_path)
    proc = cli("demo", "--fast", "--out", str(out))
    assert_user_error(proc, "did not create")
    assert _digest(tmp_path) == before


def test_paths_the_system_cannot_use_are_one_line(tmp_path, moons_run):
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("sample", "--model", str(moons_run), "--n", "5", "--out", str(tmp_path / "file" / "x.npy")),
                      "a part of the path is a file")
    assert_user_error(cli("sample", "--model", str(moons_run), "--n", "5", "--out", str(tmp_path / ("n" * 300 + ".npy"))),
                      "the name is too long")
    assert_user_error(cli(*FAST_PRETRAIN, "--out", str(tmp_path / ("r" * 300))), "the name is too long")
