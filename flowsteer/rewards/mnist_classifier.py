"""Two MNIST classifiers, trained once on the training split and cached: the reward's and an independent judge.

* ``reward``: a small CNN (two 3x3 conv layers, 32 and 64 channels, max-pooling, a 128-unit layer), seed 0.
  It scores ``even-mnist``: ``r(x) = sum_{c even} p(c | x)``.
* ``judge``: another architecture and seed (5x5 convolutions, 32 and 64 channels, a 256-unit layer), seed 1.  Class histograms and class entropy of MNIST rewards are measured with it, so that a
  model that fools the reward's network (reward hacking) does not pass as success.

Training is deterministic for a given machine (fixed seeds, a seeded shuffle, Adam at 1e-3, batch 128, 3
epochs) and takes a few minutes on a CPU.  The weights are cached as safetensors under the data cache
(:func:`flowsteer.mnist.cache_dir`), named by the architecture, the recipe version and a sha256 of the
training data, so a changed data set or recipe trains afresh.  A classifier below
:data:`MIN_TEST_ACCURACY` on the 10,000 test images is refused, not used.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

RECIPE_VERSION = {"reward": 1, "judge": 2}  # judge v1 (a tanh LeNet) reached 98.33 %: below the bar
MIN_TEST_ACCURACY = 0.985
SEEDS = {"reward": 0, "judge": 1}


def build_classifier(kind: str) -> nn.Module:
    """The untrained network of ``kind`` (``reward`` or ``judge``): ``[B, 1, 28, 28]`` in [-1, 1] -> logits ``[B, 10]``."""
    if kind == "reward":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    if kind == "judge":
        return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 5 * 5, 256), nn.ReLU(), nn.Linear(256, 10))
    raise ValueError(f"unknown classifier {kind!r}; use reward or judge")


def _images(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float()[:, None] / 127.5 - 1.0


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(_images(x[i:i + batch])).argmax(1) == torch.from_numpy(y[i:i + batch])).sum())
                   for i in range(0, len(x), batch))
    return hits / max(1, len(x))


def train_classifier(kind: str, arrays: dict[str, np.ndarray], *, epochs: int = 3,
                     say: Callable[[str], None] = lambda _: None) -> tuple[nn.Module, float]:
    """Train ``kind`` on ``arrays['x_train']`` (uint8 ``[N, 28, 28]``) / ``y_train``; returns it and its test accuracy."""
    torch.manual_seed(SEEDS[kind])
    net = build_classifier(kind)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = _images(arrays["x_train"]), torch.from_numpy(arrays["y_train"].astype(np.int64))
    g = torch.Generator().manual_seed(SEEDS[kind])
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g, device="cpu").split(128):  # trained on the host, once
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        say(f"MNIST {kind} classifier: epoch {epoch + 1}/{epochs}")
    return net.eval(), accuracy(net, arrays["x_test"], arrays["y_test"])


def data_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in ("x_train", "y_train"):
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def load_classifier(kind: str) -> nn.Module:
    """The trained ``kind`` classifier (CPU, eval mode): from the cache, else trained now and cached."""
    from safetensors.torch import load_file, save_file

    from ..io import atomic_path, atomic_write_json
    from ..mnist import cache_dir, load_mnist_arrays
    from .protocol import RewardError

    arrays = load_mnist_arrays()
    stem = cache_dir() / f"mnist_{kind}_classifier_v{RECIPE_VERSION[kind]}_{data_hash(arrays)[:16]}"
    net = build_classifier(kind)
    weights = stem.with_suffix(".safetensors")
    if weights.is_file():
        try:
            net.load_state_dict(load_file(str(weights)))
            return net.eval()
        except Exception:  # a damaged cache is trained again
            pass
    net, acc = train_classifier(kind, arrays)
    if acc < MIN_TEST_ACCURACY:
        raise RewardError(f"the MNIST {kind} classifier reached {acc:.4f} test accuracy, below {MIN_TEST_ACCURACY}; "
                          "it is not used (check the data with flowsteer data mnist)")
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    atomic_write_json(stem.with_suffix(".json"), {"kind": kind, "test_accuracy": acc, "recipe": RECIPE_VERSION[kind]})
    return net


@functools.lru_cache(maxsize=8)
def _on(kind: str, device: str) -> nn.Module:
    return load_classifier(kind).to(device)


def mnist_probabilities(x: Tensor, kind: str = "reward") -> Tensor:
    """Class probabilities ``[B, 10]`` of 28x28 images ``x`` (values clipped to [-1, 1]) under ``kind``."""
    net = _on(kind, str(x.device))
    with torch.no_grad():
        return torch.softmax(net(x.reshape(-1, 1, 28, 28).float().clamp(-1, 1)), dim=1)


class MnistClassReward:
    """``r(x) = sum_{c in classes} p(c | x)`` under the reward classifier; :meth:`classify` asks the judge."""

    num_classes = 10

    def __init__(self, classes: tuple[int, ...], *, name: str, scorer: str = "reward") -> None:
        self.classes, self.name, self.scorer = tuple(classes), name, scorer

    def __call__(self, x: Tensor, **_: Any) -> Tensor:
        from .protocol import RewardError

        if tuple(x.shape[1:]) not in ((1, 28, 28), (28, 28), (784,)):
            raise RewardError(f"reward {self.name!r} needs 28x28 MNIST images, but samples have shape {tuple(x.shape[1:])}")
        return mnist_probabilities(x, self.scorer)[:, list(self.classes)].sum(dim=1)

    def classify(self, x: Tensor) -> Tensor:
        return mnist_probabilities(x, "judge").argmax(dim=1)
