import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch thread each
    import torch

    torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300):
    """Run ``python -m flowsteer ARGS`` in a subprocess; return CompletedProcess."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flowsteer", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory):
    """A small pretrained moons run folder, shared by tests that need one."""
    from flowsteer import PretrainConfig, TrainConfig, pretrain

    out = tmp_path_factory.mktemp("runs") / "moons"
    pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=300, log_every=50)), out, progress="quiet")
    return out
