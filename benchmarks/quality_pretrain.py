"""Acceptance figures of the foundation issue, computed from sample files made by the CLI.

    flowsteer pretrain --data moons --out runs/moons
    flowsteer sample --model runs/moons --n 1000 --out s.npy
    python benchmarks/quality_pretrain.py moons s.npy        # W2 to 1000 held-out points (target <= 0.15)

    flowsteer pretrain --data digits --out runs/digits
    flowsteer sample --model runs/digits --n 2000 --out d.npy
    python benchmarks/quality_pretrain.py digits d.npy       # TV of the class histogram (target <= 0.10)

For digits, a logistic-regression classifier fitted on all 1797 digits labels the samples; the
histogram is compared with the data's class histogram in total variation.
"""

from __future__ import annotations

import sys

import numpy as np

from flowsteer.data import load_data
from flowsteer.rewards.classifier import digit_labels
from flowsteer.metrics import class_histogram, entropy, total_variation, wasserstein2


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    x = np.load(path)
    if kind == "digits":
        import torch

        pred = digit_labels(torch.from_numpy(x.astype(np.float32)))
        labels = load_data("digits").train.labels
        p, q = class_histogram(pred, 10), class_histogram(labels, 10)
        print(f"n={len(x)} class histogram {np.round(p, 3).tolist()}")
        print(f"data histogram            {np.round(q, 3).tolist()}")
        print(f"total variation = {total_variation(p, q):.4f} (target <= 0.10), entropy = {entropy(p):.3f} nats")
    else:
        heldout = load_data(kind).heldout.x[: len(x)].numpy()
        print(f"W2({kind} samples, {len(heldout)} held-out points) = {wasserstein2(x, heldout):.4f}")
        ref = load_data(kind).train.x[: len(x)].numpy()
        print(f"reference: W2(train points, held-out points) = {wasserstein2(ref, heldout):.4f}")


if __name__ == "__main__":
    main()
