"""The command line: success paths and every bad input of issue 2.

Most commands run in this process through ``flowsteer.cli.main`` (``cli``: same stdout, stderr and exit
status, no interpreter start-up); ``test_unknown_dataset`` and ``test_help_explains_options`` go through
``python -m flowsteer`` in a subprocess, so the real entry point's exit status and output stay covered.
"""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli, run_cli


def assert_user_error(proc, *needles):
    """Exit 2, exactly one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def existing(tmp_path):
    """An existing output file that no failing command may touch."""
    path = tmp_path / "keep.npy"
    np.save(path, np.arange(5))
    return path


def test_unknown_dataset(tmp_path):
    assert_user_error(run_cli("pretrain", "--data", "cifar10", "--out", str(tmp_path / "r")), "unknown data set 'cifar10'",
                      "digits", "mnist")
    assert not (tmp_path / "r").exists()


def test_missing_file(tmp_path):
    assert_user_error(cli("pretrain", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r")), "does not exist")


def test_array_with_wrong_dimensions(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(7))
    assert_user_error(cli("pretrain", "--data", str(tmp_path / "a.npy"), "--out", str(tmp_path / "r")),
                      "1 dimension", "[N, D]")


def test_array_with_nan(tmp_path):
    a = np.ones((20, 2))
    a[4, 0] = np.nan
    np.save(tmp_path / "a.npy", a)
    assert_user_error(cli("pretrain", "--data", str(tmp_path / "a.npy"), "--out", str(tmp_path / "r")), "NaN")


def test_image_folder_with_mixed_sizes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (16, 16)).save(folder / "b.jpg")
    assert_user_error(cli("pretrain", "--data", str(folder), "--out", str(tmp_path / "r")), "different sizes", "resize")


def test_model_folder_that_is_not_a_run(tmp_path, existing):
    before = existing.read_bytes()
    assert_user_error(cli("sample", "--model", str(tmp_path), "--out", str(existing)), "not a flowsteer run")
    assert existing.read_bytes() == before


def test_unknown_solver(moons_run, existing):
    before = existing.read_bytes()
    assert_user_error(cli("sample", "--model", str(moons_run), "--solver", "rk45", "--out", str(existing)),
                      "invalid choice: 'rk45'", "heun")
    assert existing.read_bytes() == before


def test_bad_options_and_existing_run(tmp_path, moons_run):
    assert_user_error(cli("pretrain", "--data", "moons", "--out", str(moons_run)), "already holds a run", "--resume")
    assert_user_error(cli("pretrain", "--data", "moons", "--out", str(tmp_path / "r"), "--steps", "0",
                              "--lr", "-1"), "--steps", "--lr")
    assert_user_error(cli("sample", "--model", str(moons_run), "--out", str(tmp_path / "s.txt")), ".npy")
    assert_user_error(cli("pretrain", "--out", str(tmp_path / "r")), "missing --data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 10\n")
    assert_user_error(cli("pretrain", "--config", str(cfg), "--data", "moons", "--out", str(tmp_path / "r")),
                      "unknown option(s) stepz")


def test_pretrain_then_sample_through_the_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: moons\nsteps: 30\nbatch-size: 64\nlog-every: 10\n")
    out = tmp_path / "run"
    proc = cli("pretrain", "--config", str(cfg), "--out", str(out), "--steps", "20", "--progress", "log")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["settings"]["train"]["steps"] == 20  # command line wins over YAML
    assert saved["settings"]["train"]["batch_size"] == 64  # YAML applies
    assert "step 20/20" in proc.stderr
    proc = cli("sample", "--model", str(out), "--n", "64", "--steps", "4", "--out", str(tmp_path / "s.npy"), "--quiet")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (64, 2) and np.isfinite(x).all()
    proc = cli("sample", "--model", str(out), "--n", "64", "--solver", "dopri5", "--out", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NFE" in proc.stdout


def test_help_explains_options():
    proc = run_cli("pretrain", "--help")
    assert proc.returncode == 0
    for flag in ("--data", "--out", "--model", "--steps", "--batch-size", "--lr", "--seed", "--config", "--quiet"):
        assert flag in proc.stdout
    proc = run_cli("sample", "--help")
    for flag in ("--model", "--n", "--steps", "--solver", "--seed", "--out"):
        assert flag in proc.stdout
