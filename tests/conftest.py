import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch thread each
    import torch

    torch.set_num_threads(1)


def cli_env() -> dict[str, str]:
    """The environment of a ``python -m flowsteer`` subprocess: this checkout first on the path and, under
    xdist, one torch thread like the worker itself (two workers each starting a 2-thread child would
    put 4 busy threads on the 2 cores, and OpenMP threads that wait for a descheduled sibling spin)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300):
    """Run ``python -m flowsteer ARGS`` in a subprocess; return CompletedProcess.

    For what needs a real process: signals, the entry point's exit status, a fresh interpreter.
    Everything else can use the cheaper :func:`cli` (same result object, no interpreter start-up).
    """
    import subprocess

    env = cli_env()
    return subprocess.run([sys.executable, "-m", "flowsteer", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def cli(*args: str, cwd: Path | None = None):
    """Run ``flowsteer.cli.main(ARGS)`` in this process; return a CompletedProcess like :func:`run_cli`'s.

    What a subprocess would show is kept: stdout and stderr are captured as text (Python-level writes
    and, after them, anything written to file descriptors 1 and 2 by C code), argparse's exits give
    their status, an uncaught exception prints its traceback to stderr and gives status 1 (as the
    interpreter would), and Python warnings are printed to the captured stderr under the interpreter's
    default filters (pytest would otherwise record them silently and hide a stray stderr line).
    """
    import contextlib
    import io
    import subprocess
    import tempfile
    import traceback
    import warnings

    from flowsteer.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    sys.stdout.flush(), sys.stderr.flush()
    raw = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    saved = {fd: os.dup(fd) for fd in raw}
    for fd, f in raw.items():
        os.dup2(f.fileno(), fd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()  # the interpreter's defaults, as `python -m flowsteer` starts with
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = warnings._showwarning_orig  # print to (the captured) sys.stderr
            try:
                if cwd is not None:
                    os.chdir(cwd)
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            finally:
                os.chdir(here)
    finally:
        for fd in raw:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
    texts = {}
    for fd, f in raw.items():
        f.seek(0)
        texts[fd] = f.read().decode(errors="replace")
        f.close()
    return subprocess.CompletedProcess(["flowsteer", *args], code, out.getvalue() + texts[1],
                                       err.getvalue() + texts[2])


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory):
    """A small pretrained moons run folder, shared by tests that need one."""
    from flowsteer import PretrainConfig, TrainConfig, pretrain

    out = tmp_path_factory.mktemp("runs") / "moons"
    pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=300, log_every=50)), out, progress="quiet")
    return out


# --------------------------------------------------------------------------- order of the work (make test)
#
# `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each test file is one unit of
# work (module-scoped fixtures are built once), handed out in collection order.  So the slowest files go
# first - they overlap on the two workers and the tail is short - and the Theorem-2 test goes last and runs
# alone (see `alone_on_the_machine`).  Measured seconds of one core per file, slowest first; files not named
# here keep their order after these.  (xdist_group marks would be finer, but pytest 9 ignores the node-id
# suffix through which pytest-xdist 3.8 groups tests: `--dist loadgroup` silently splits the groups.)
SLOW_FILES_FIRST = (
    "tests/test_target_beta.py",  # about 100 s (one thread: the law after N phases, 2000 + 1600 steps at batch 512)
    "tests/test_distributed.py",  # 76 s (accelerate launches)
    "tests/test_demo_report.py",  # 73 s (the `demo --fast` fixture)
    "tests/test_reliability.py",  # 58 s (SIGKILL + resume, 3 kinds)
    "tests/test_orw.py",  # 26 s
    "tests/test_signals.py",  # 24 s (subprocesses stopped by signals)
    "tests/test_gft.py",  # 21 s
    "tests/test_readme.py",  # 11 s
    "tests/test_bad_inputs.py",  # 10 s
    "tests/test_adapters.py",  # 8 s
    "tests/test_training.py",  # 6 s
    "tests/test_cli.py",  # 5 s
    "tests/test_rewards.py",  # 4 s
    "tests/test_evaluate.py",  # 3 s
)
ALONE_LAST = "tests/test_orw_theorem2.py"


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        if path == ALONE_LAST:
            return len(SLOW_FILES_FIRST) + 1
        return SLOW_FILES_FIRST.index(path) if path in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)  # stable: the tests of a file stay together and in their order


# The Theorem-2 test is pinned to 2 torch threads (its figures depend on the thread count).  Two OpenMP
# threads that share the 2 cores with any other busy process wait on each other at every parallel region:
# about 2 min alone on an idle 2-core machine, 7 to 15 min beside the other xdist worker.  Under xdist, a
# test that requests `alone_on_the_machine` waits until the other worker's current test has finished and
# keeps it waiting (a shared/exclusive pair of flocks) - ordering it last means nothing is left to wait.


def _lock_files():
    """(gate, data) lock files shared by this run's xdist workers; None outside xdist."""
    import tempfile

    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not uid:
        return None
    folder = Path(tempfile.gettempdir())
    return (open(folder / f"flowsteer-tests-{uid}.gate", "a+"), open(folder / f"flowsteer-tests-{uid}.lock", "a+"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import fcntl

    files = None if "alone_on_the_machine" in getattr(item, "fixturenames", ()) else _lock_files()
    if files is None:
        yield
        return
    gate, data = files
    fcntl.flock(gate, fcntl.LOCK_EX)  # blocks while a test that must run alone is waiting or running
    fcntl.flock(data, fcntl.LOCK_SH)
    fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(data, fcntl.LOCK_UN)
        gate.close(), data.close()


@pytest.fixture
def alone_on_the_machine():
    """Under xdist: wait for the other worker's running test, and hold its next one until this test ends."""
    import fcntl

    files = _lock_files()
    if files is None:
        yield
        return
    gate, data = files
    fcntl.flock(gate, fcntl.LOCK_EX)
    fcntl.flock(data, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(data, fcntl.LOCK_UN), fcntl.flock(gate, fcntl.LOCK_UN)
        gate.close(), data.close()
