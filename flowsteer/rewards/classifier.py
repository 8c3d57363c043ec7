"""A deterministic digit classifier for the 8x8 digits (reward and evaluation).

Multinomial logistic regression (scikit-learn, lbfgs, C = 1) fitted on all
1797 digits with pixels scaled to [-1, 1].  The fit is deterministic; its
coefficients are cached in memory and on disk (``$FLOWSTEER_CACHE`` or
``~/.cache/flowsteer``), and prediction runs in torch:
``p(y | x) = softmax(W x + b)``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CACHE_NAME = "digits_logreg_v1.npz"


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWSTEER_CACHE", Path.home() / ".cache" / "flowsteer"))


def _fit() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    clf = LogisticRegression(max_iter=5000).fit(d.images.reshape(-1, 64) / 8.0 - 1.0, d.target)
    return clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)


@functools.lru_cache(maxsize=1)
def digit_logreg() -> tuple[Tensor, Tensor]:
    """``(W [10, 64], b [10])`` of the classifier, fitted once and cached."""
    path = cache_dir() / CACHE_NAME
    coef = intercept = None
    if path.exists():
        try:
            with np.load(path) as f:
                coef, intercept = f["coef"], f["intercept"]
            if coef.shape != (10, 64) or intercept.shape != (10,):
                coef = intercept = None
        except Exception:  # a damaged cache is refitted
            coef = intercept = None
    if coef is None:
        coef, intercept = _fit()
        try:
            from ..io import atomic_path

            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, coef=coef, intercept=intercept)
        except OSError:
            pass  # a read-only home still works, just without the disk cache
    return torch.from_numpy(np.asarray(coef, dtype=np.float32)), torch.from_numpy(np.asarray(intercept, dtype=np.float32))


def digit_logits(x: Tensor) -> Tensor:
    """Class logits ``[B, 10]`` of digits ``x`` (``[B, 1, 8, 8]`` or ``[B, 64]``, values clipped to [-1, 1])."""
    w, b = digit_logreg()
    flat = x.reshape(x.shape[0], -1).float().clamp(-1, 1)
    if flat.shape[1] != 64:
        raise ValueError(f"the digit classifier needs 8x8 images (64 values), got {tuple(x.shape[1:])}")
    return flat @ w.T.to(flat.device) + b.to(flat.device)


def digit_probabilities(x: Tensor) -> Tensor:
    """Class probabilities ``[B, 10]`` of digits ``x`` (see :func:`digit_logits`)."""
    return torch.softmax(digit_logits(x), dim=1)


def digit_labels(x: Tensor) -> Tensor:
    """Predicted digit ``[B]`` of each sample."""
    return digit_probabilities(x).argmax(dim=1)
