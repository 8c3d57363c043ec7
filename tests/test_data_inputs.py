"""Data and config inputs that are not errors (issue 14): what the loaders ignore, keep or accept.

The refusals (bad labels, ambiguous image folders, unreadable YAML, float32 overflow) are rows of
``tests/test_bad_inputs.py``; this file checks the other side of each rule - hidden names are ignored and
the loaded count is the visible images, labels and in-range values come through unchanged, and config
files that are fine (a BOM, nested sections, a value starting with '-') are read as written.
"""

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import cli  # noqa: E402

from flowsteer.cli import parse_args  # noqa: E402
from flowsteer.data import load_data  # noqa: E402
from flowsteer.methods.configs import AlignConfig, PretrainConfig  # noqa: E402


def _images(folder: Path, n: int, *, value: int = 0, size: int = 4, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (size, size), color=value).save(folder / f"{i}{suffix}")


def _junk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05Mac OS X resource fork, not an image")


def _everything(split) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.cat([split.train.x, split.heldout.x])
    y = None if split.train.labels is None else torch.cat([split.train.labels, split.heldout.labels])
    return x, y


def test_hidden_names_and_other_files_are_ignored_in_a_flat_folder(tmp_path):
    folder = tmp_path / "pics"
    _images(folder, 4)
    Image.new("L", (4, 4)).save(folder / "upper.PNG")
    Image.new("L", (4, 4)).save(folder / "photo.JPEG", format="JPEG")
    # none of these is an image of the data set: a notebook's checkpoints (a folder, images of another size),
    # macOS metadata (a dot-file, AppleDouble '._' twins that end in .png, a __MACOSX folder), notes
    _images(folder / ".ipynb_checkpoints", 2, size=9)
    _junk(folder / ".DS_Store")
    _junk(folder / "._0.png")
    _images(folder / "__MACOSX", 2, size=9)
    (folder / "README.md").write_text("my pictures\n")
    (folder / "labels.csv").write_text("file,label\n0.png,1\n")
    x, y = _everything(load_data(str(folder)))
    assert x.shape == (6, 1, 4, 4) and y is None


def test_hidden_names_are_ignored_in_class_folders(tmp_path):
    folder = tmp_path / "classes"
    _images(folder / "cat", 3, value=0)
    _images(folder / "dog", 2, value=255)
    _images(folder / ".ipynb_checkpoints", 4, value=128)  # not a class
    _images(folder / "cat" / ".ipynb_checkpoints", 2, value=128)  # not a folder inside a class folder
    _junk(folder / "dog" / ".DS_Store")
    _junk(folder / "dog" / "._1.png")
    (folder / "README.md").write_text("cats and dogs\n")
    split = load_data(str(folder))
    x, y = _everything(split)
    assert len(x) == 5 and split.train.num_classes == 2
    assert torch.bincount(y).tolist() == [3, 2]  # classes numbered in the sorted order of the names: cat 0, dog 1
    assert torch.equal(y, (x.mean(dim=(1, 2, 3)) > 0).long())  # each image keeps its own folder's class


def test_labels_in_range_come_through_unchanged(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    y = np.array([0, 19] + [3] * 18, dtype=np.uint8)  # the largest class number allowed is N - 1
    np.savez(tmp_path / "l.npz", x=x, y=y)
    split = load_data(str(tmp_path / "l.npz"))
    xs, ys = _everything(split)
    assert split.train.num_classes == 20 and ys.dtype == torch.long
    order = {tuple(row): label for row, label in zip(x.tolist(), y.tolist())}
    assert all(order[tuple(row)] == label for row, label in zip(xs.tolist(), ys.tolist()))


def test_float64_values_inside_float32_load_without_a_warning(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2))
    x[3, 1] = 3e38  # just under float32's largest value
    x[4, 0] = -1e30
    np.save(tmp_path / "big.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns on an overflowing cast; none may happen
        xs, _ = _everything(load_data(str(tmp_path / "big.npy"), normalize="none"))
    assert torch.isfinite(xs).all() and xs.abs().max().item() == pytest.approx(3e38, rel=1e-6)


def test_a_non_integer_label_at_sample_is_one_line(tmp_path):
    for label in ("1.5", "two"):
        proc = cli("sample", "--model", str(tmp_path), "--n", "4", "--label", label, "--out", str(tmp_path / "s.npy"))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "--label" in lines[0] and "is not an integer" in lines[0], lines[0]
    assert not (tmp_path / "s.npy").exists()


def test_sample_label_of_a_conditional_run(tmp_path):
    """The last class works and the first beyond it is refused in one line (test_bad_inputs has the rest)."""
    from flowsteer import TrainConfig, pretrain

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "l.npz", x=rng.normal(size=(30, 2)).astype(np.float32), y=np.arange(30) % 3)
    pretrain(PretrainConfig(data=str(tmp_path / "l.npz"), conditional=True, width=8,
                            train=TrainConfig(steps=3, batch_size=8, warmup_steps=0, log_every=1)),
             tmp_path / "run", progress="quiet")
    ok = cli("sample", "--model", str(tmp_path / "run"), "--n", "5", "--label", "2", "--out", str(tmp_path / "a.npy"),
             "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "a.npy").shape == (5, 2)
    bad = cli("sample", "--model", str(tmp_path / "run"), "--n", "5", "--label", "3", "--out", str(tmp_path / "b.npy"))
    assert bad.returncode == 2 and "--label 3 is out of range" in bad.stderr and "0..2" in bad.stderr, bad.stderr
    assert not (tmp_path / "b.npy").exists()


def test_config_files_that_are_fine_are_read_as_written(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffdata: moons\nsteps: 7\n".encode("utf-8"))
    parsed = parse_args(["pretrain", "--config", str(bom), "--out", "o"])
    assert parsed[PretrainConfig].data == "moons" and parsed[PretrainConfig].train.steps == 7

    nested = tmp_path / "nested.yaml"  # the layout of a run's config.json settings
    nested.write_text("data: -odd-name.npy\ntrain:\n  lr: 0.01\n  batch_size: 64\nconditional: true\n")
    config = parse_args(["pretrain", "--config", str(nested), "--out", "o"])[PretrainConfig]
    assert config.data == "-odd-name.npy"  # a value starting with '-' is a value, not an option
    assert (config.train.lr, config.train.batch_size, config.conditional) == (0.01, 64, True)

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: b\nreward: even-digits\nalpha: [0, 0.1, 0.3]\n")
    parsed = parse_args(["align", "--config", str(sweep), "--out", "o"])
    assert parsed.lists["alpha"] == [0.0, 0.1, 0.3] and parsed[AlignConfig].reward == "even-digits"

    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("data: moons\nbatch_size: 32\nbatch-size: 64\n")
    proc = cli("pretrain", "--config", str(aliases), "--out", str(tmp_path / "new"))
    assert proc.returncode == 2 and "option batch-size is given twice (batch_size and batch-size)" in proc.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "secret.yaml"
    cfg.write_text("data: moons\n")
    cfg.chmod(0)
    try:
        proc = cli("pretrain", "--config", str(cfg), "--out", str(tmp_path / "new"))
    finally:
        cfg.chmod(0o600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot read it" in lines[0], proc.stderr


def test_an_empty_config_path_is_an_error_not_no_config(tmp_path):
    proc = cli("pretrain", "--config", "", "--data", "moons", "--out", str(tmp_path / "new"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--config is empty" in lines[0], proc.stderr
    assert not (tmp_path / "new").exists()
