"""Data: 2-D toys, sklearn's 8x8 digits, and user arrays or image folders.

A data *spec* is a string:

* ``moons``, ``8gaussians``, ``checkerboard``, ``circles``, ``swissroll``: 2-D toys,
  generated on the fly with a fixed seed (train and held-out sets are drawn
  independently);
* ``digits`` or ``digits:0,2,4``: sklearn's 8x8 digits (1797 images, shape
  ``(1, 8, 8)``, pixel values 0..16 scaled to [-1, 1]) with labels, optionally
  only some classes;
* ``mnist`` / ``mnist:CLASSES``: MNIST 28x28, its test set held out (prepared once: ``flowsteer data mnist``);
* ``PATH.csv``: numeric vectors, one per row, with or without a header row; a ``y`` or ``label`` column
  holds class labels (:mod:`flowsteer.csv_io`);
* ``PATH.npy`` / ``PATH.npz``: an array ``[N, D]`` (vectors), ``[N, H, W]`` or
  ``[N, C, H, W]`` (images); an ``.npz`` holds ``x`` (or a single array) and
  optionally labels ``y``, one integer class number per sample from 0 (see
  ``_check_labels``).  Values beyond float32's range (about 3.4e38) are refused;
* a folder of PNG/JPEG images of one size (rules: :func:`image_folder_files`).

:func:`load_data` returns a :class:`DataSplit` with a training set and a held-out
set for evaluation.  Values are in *data units*; the model is trained on
``Normalizer.encode(x)`` and samples are decoded back.
"""

from __future__ import annotations

from .config import TOYS  # noqa: F401 (re-exported)

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .image_folders import IMAGE_SUFFIXES, image_folder_files, load_image_folder  # noqa: F401 (re-exported)

TOY_TRAIN_SIZE = 20_000
TOY_EVAL_SIZE = 5_000


@dataclass(frozen=True)
class Normalizer:
    """Affine map ``z = (x - mean) / std`` between data units and model units.

    ``mean`` and ``std`` are flat lists (one per coordinate, or one value for all).
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape[1:]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if mean.numel() > 1:
            mean, std = mean.reshape(shape), std.reshape(shape)
        return mean, std

    def encode(self, x: Tensor) -> Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def decode(self, z: Tensor) -> Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    @classmethod
    def standardize(cls, x: Tensor) -> "Normalizer":
        """Per-coordinate mean and std of ``x`` (``[N, D]``)."""
        flat = x.reshape(x.shape[0], -1).double()
        std = flat.std(dim=0).clamp_min(1e-6)
        return cls(tuple(flat.mean(dim=0).tolist()), tuple(std.tolist()))

    def to_config(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Normalizer":
        return cls(tuple(cfg["mean"]), tuple(cfg["std"]))


@dataclass(frozen=True)
class DataSet:
    """Samples in data units.

    Attributes:
        x: ``[N, *shape]`` float32.
        labels: ``[N]`` long, or None.
        num_classes: number of label values (0 when unlabelled).
    """

    name: str
    x: Tensor
    labels: Tensor | None = None
    num_classes: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: Tensor) -> "DataSet":
        labels = self.labels[index] if self.labels is not None else None
        return DataSet(self.name, self.x[index], labels, self.num_classes)


@dataclass(frozen=True)
class DataSplit:
    """A training set and a held-out set, plus the default normalisation."""

    train: DataSet
    heldout: DataSet
    normalizer: Normalizer


# --------------------------------------------------------------------------- toys


def make_toy(name: str, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` points ``[n, 2]`` of a 2-D toy distribution."""
    from sklearn import datasets as skd

    rng = np.random.default_rng(seed)
    if name == "moons":
        x, _ = skd.make_moons(n, noise=0.05, random_state=seed)
    elif name == "circles":
        x, _ = skd.make_circles(n, noise=0.05, factor=0.5, random_state=seed)
    elif name == "swissroll":
        x3, _ = skd.make_swiss_roll(n, noise=0.5, random_state=seed)
        x = x3[:, [0, 2]] / 5.0
    elif name == "8gaussians":
        angles = 2 * math.pi * rng.integers(0, 8, n) / 8
        centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        x = centres + 0.2 * rng.standard_normal((n, 2))
    elif name == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2.0 - 2.0
        x2 = x2 + (np.floor(x1) % 2)
        x = np.stack([x1, x2], axis=1)
    else:
        raise DataError(f"unknown data set {name!r}; use one of {', '.join(TOYS)}, digits[:CLASSES], mnist[:CLASSES], a .npy/.npz/.csv file or an image folder")
    return x.astype(np.float32)


# --------------------------------------------------------------------------- digits


def load_digits(classes: tuple[int, ...] | None = None) -> DataSet:
    """sklearn's 8x8 digits as ``[N, 1, 8, 8]`` in [-1, 1] with labels 0..9."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.from_numpy(bunch.images.astype(np.float32))[:, None] / 8.0 - 1.0
    y = torch.from_numpy(bunch.target.astype(np.int64))
    data = DataSet("digits", x, y, 10)
    if classes:
        keep = torch.isin(y, torch.tensor(classes, device="cpu"))
        data = data.subset(torch.nonzero(keep).squeeze(1))
        data = DataSet(f"digits:{','.join(map(str, classes))}", data.x, data.labels, 10)
    return data


def load_mnist(classes: tuple[int, ...] | None = None) -> tuple[DataSet, DataSet]:
    """MNIST's 60,000 training and 10,000 test images as ``[N, 1, 28, 28]`` in [-1, 1] with labels 0..9 (the test
    images are the held-out split); prepared once by ``flowsteer data mnist`` (:mod:`flowsteer.mnist`)."""
    from .mnist import load_mnist_arrays

    arrays = load_mnist_arrays()
    name = "mnist" + (f":{','.join(map(str, classes))}" if classes else "")
    splits = []
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[f"x_{split}"]).float()[:, None] / 127.5 - 1.0
        y = torch.from_numpy(arrays[f"y_{split}"])
        if classes:
            keep = torch.nonzero(torch.isin(y, torch.tensor(classes, device="cpu"))).squeeze(1)
            x, y = x[keep], y[keep]
        splits.append(DataSet(name, x, y, 10))
    return splits[0], splits[1]


def parse_classes(text: str) -> tuple[int, ...]:
    """``"0,2,4"`` or ``"5-9"`` -> tuple of ints."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise DataError(f"cannot read class list {text!r}; write it like digits:0,2,4 or mnist:5-9") from None
    bad = [c for c in out if not 0 <= c <= 9]
    if bad or not out:
        raise DataError(f"digit classes must be in 0..9, got {text!r}; write it like digits:0,2,4 or mnist:5-9")
    return tuple(sorted(set(out)))


# --------------------------------------------------------------------------- user files


def _check_array(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: array has dtype {x.dtype}; expected numbers")
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{source}: array has {x.ndim} dimension(s) {tuple(x.shape)}; expected [N, D] vectors, "
                        "[N, H, W] or [N, C, H, W] images")
    if x.shape[0] < 2 or 0 in x.shape:
        raise DataError(f"{source}: needs at least 2 samples of at least one value each, got shape {tuple(x.shape)}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(x.shape[0], -1).any(axis=1).sum())
        raise DataError(f"{source}: {bad} sample(s) contain NaN or inf; remove or impute them first")
    top = float(np.finfo(np.float32).max)  # float64 (or wider) values beyond it would become inf
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and (x.max() > top or x.min() < -top):
        rows = x.reshape(x.shape[0], -1)
        big = np.abs(rows) > top
        row = int(big.any(axis=1).argmax())
        raise DataError(f"{source}: value {rows[row][big[row]][0]:g} at row {row} overflows float32 (largest about "
                        "3.4e+38); rescale the data (e.g. divide it by its largest absolute value) and save it again")
    if x.dtype == np.uint8 and x.ndim >= 3:
        x = x.astype(np.float32) / 127.5 - 1.0
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    return x


def _load_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            key = next((k for k in ("x", "data", "samples") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: .npz has arrays {keys}; name the samples 'x' (and labels 'y')")
            labels = next((npz[k] for k in ("y", "labels") if k in keys), None)
            return npz[key], labels
    except DataError:
        raise
    except Exception as exc:  # corrupt or not an array file
        fix = "save numbers, not Python objects" if "allow_pickle" in str(exc) else "save it with numpy.save"
        raise DataError(f"{path}: cannot read it as a numpy array ({type(exc).__name__}: {exc}); {fix}") from None


def _check_labels(labels: Any, n: int, source: str) -> Tensor:
    """``[n]`` long class numbers 0..K-1 (K <= n), or a one-line error naming the fix."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        whole = labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all()
        raise DataError(f"{source}: labels have dtype {labels.dtype}; labels are class numbers 0, 1, 2 ... of an "
                        "integer dtype: " + ("save them with y.astype(np.int64)" if whole else
                                             "map each class to a whole number from 0 and save them as integers"))
    if labels.shape != (n,):
        raise DataError(f"{source}: labels have shape {labels.shape} for {n} samples; give one class number per "
                        f"sample, shape ({n},)")
    if n and labels.min() < 0:
        row = int(labels.argmin())
        raise DataError(f"{source}: label {int(labels[row])} at row {row} is negative; renumber the classes from 0")
    if n and labels.max() >= n:
        row = int(labels.argmax())
        raise DataError(f"{source}: label {int(labels[row])} at row {row} is out of range: {n} samples can have at "
                        f"most {n} classes, numbered 0..{n - 1}; renumber the classes from 0 "
                        "(np.unique(y, return_inverse=True)[1])")
    return torch.from_numpy(labels.astype(np.int64))


def load_user_data(path: Path) -> DataSet:
    if not path.exists():
        if len(path.parts) == 1 and not path.suffix:
            raise DataError(f"unknown data set {str(path)!r}; use one of {', '.join(TOYS)}, digits[:CLASSES], mnist[:CLASSES], a .npy/.npz/.csv file or an image folder")
        raise DataError(f"data file {str(path)!r} does not exist; check the path, or give a data set name ({', '.join(TOYS)}, digits, mnist)")
    if path.is_dir():
        x, labels = load_image_folder(path)
    elif path.suffix in (".npy", ".npz"):
        x, labels = _load_array_file(path)
    elif path.suffix.lower() == ".csv":
        from .csv_io import read_csv

        x, labels = read_csv(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .npy, .npz, .csv or a folder of PNG/JPEG "
                        "images")
    x = _check_array(np.asarray(x), str(path))
    y = _check_labels(labels, x.shape[0], str(path)) if labels is not None else None
    num_classes = int(y.max()) + 1 if y is not None else 0
    return DataSet(path.name, torch.from_numpy(x), y, num_classes)


# --------------------------------------------------------------------------- entry point


def _holdout_split(data: DataSet, fraction: float, seed: int) -> tuple[DataSet, DataSet]:
    n = len(data)
    n_out = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu")
    return data.subset(perm[n_out:]), data.subset(perm[:n_out])


def load_data(spec: str, *, holdout_fraction: float = 0.1, split_seed: int = 0, normalize: str = "auto") -> DataSplit:
    """Load a data spec (see the module doc) as a train / held-out split.

    Args:
        spec: data set name or path.
        holdout_fraction: share of a finite data set kept out for evaluation
            (toys draw a separate held-out set of 5000 points instead).
        split_seed: seed of the split (fixed, so that evaluation is comparable
            across training seeds).
        normalize: ``auto`` (standardise vectors, keep images in [-1, 1]),
            ``standardize`` or ``none``.
    """
    name, _, arg = spec.partition(":")
    if name in TOYS and not arg:
        train = DataSet(name, torch.from_numpy(make_toy(name, TOY_TRAIN_SIZE, seed=1)))
        heldout = DataSet(name, torch.from_numpy(make_toy(name, TOY_EVAL_SIZE, seed=2)))
    elif name == "digits":
        data = load_digits(parse_classes(arg) if arg else None)
        train, heldout = _holdout_split(data, holdout_fraction, split_seed)
    elif name == "mnist":
        train, heldout = load_mnist(parse_classes(arg) if arg else None)
    else:
        data = load_user_data(Path(spec).expanduser())
        train, heldout = _holdout_split(data, holdout_fraction, split_seed)
    if normalize not in ("auto", "standardize", "none"):
        raise DataError(f"unknown normalisation {normalize!r}; use auto, standardize or none")
    if normalize == "standardize" or (normalize == "auto" and not train.is_image):
        normalizer = Normalizer.standardize(train.x)
    else:
        normalizer = Normalizer()
    return DataSplit(train, heldout, normalizer)
