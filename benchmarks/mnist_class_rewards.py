"""Per judge class, the share of a run's samples and their mean reward (the reward classifier's P(even)).

Reads the samples benchmarks/mnist_paper.py saved (OUT/samples/NAME.npy, 2000 per run) and labels them with the
judge classifier.  It tells whether a class a run lost (or an odd class it kept) was read differently by the
reward than in the base's samples: the MNIST frontier runs keep 2-7.5 % 4s where the optimum keeps about 17 %.

    FLOWSTEER_DATA_DIR=D python benchmarks/mnist_class_rewards.py --out O [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier_plot import EVEN  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="mnist_paper.py's output folder")
    ap.add_argument("names", nargs="*", help="sample files to read (default: every one in OUT/samples)")
    args = ap.parse_args()
    from flowsteer.rewards.mnist_classifier import mnist_probabilities

    folder = Path(args.out) / "samples"
    names = args.names or sorted(p.stem for p in folder.glob("*.npy"))
    print("| samples | " + " | ".join(f"class {c}: share / mean r" for c in range(10)) + " | 4s with r > 0.99 |")
    print("|---" * 12 + "|")
    for name in names:
        x = torch.from_numpy(np.clip(np.load(folder / f"{name}.npy").reshape(-1, 1, 28, 28), -1, 1).astype(np.float32))
        r = mnist_probabilities(x, "reward")[:, list(EVEN)].sum(1)
        judged = mnist_probabilities(x, "judge").argmax(1)
        cells = []
        for c in range(10):
            m = judged == c
            cells.append(f"{float(m.float().mean()):.3f} / {float(r[m].mean()):.3f}" if m.any() else "0 / -")
        fours = judged == 4
        high = f"{float((r[fours] > 0.99).float().mean()):.3f}" if fours.any() else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {high} |")


if __name__ == "__main__":
    main()
