"""``flowsteer demo``: the main job with no arguments needed.

Until the fine-tuning methods land, the demo pretrains a flow model on
sklearn's 8x8 digits, samples a grid, and checks the sampled class mix
against the data's (a logistic-regression classifier labels the samples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def digit_classifier():
    """Logistic regression fitted on all 1797 digits (pixels scaled to [-1, 1]); deterministic."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    return LogisticRegression(max_iter=5000).fit(d.images.reshape(-1, 64) / 8.0 - 1.0, d.target), d.target


def run_demo(out: Path, *, fast: bool = False, progress: str = "auto", say: Callable[[str], None] = print) -> dict:
    from .io import atomic_write_json
    from .methods.pretrain import PretrainConfig, pretrain
    from .metrics import class_histogram, entropy, total_variation
    from .plots import save_samples_png
    from .config import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    steps = 800 if fast else TrainConfig().steps
    say(f"[1/2] pretraining a flow model on the 8x8 digits ({steps} steps) -> {out / 'pretrain'}")
    run = pretrain(PretrainConfig(data="digits", train=TrainConfig(steps=steps)), out / "pretrain", progress=progress)
    say("[2/2] sampling 2000 digits and checking their class mix")
    x = run.sample(2000, seed=0).x
    save_samples_png(x[:100], out / "samples.png", title="flowsteer: pretrained on 8x8 digits")
    clf, labels = digit_classifier()
    pred = clf.predict(np.clip(x.reshape(len(x), -1).numpy(), -1, 1))
    hist, data_hist = class_histogram(pred, 10), class_histogram(labels, 10)
    summary = {
        "steps": steps,
        "class_histogram": hist.round(4).tolist(),
        "data_class_histogram": data_hist.round(4).tolist(),
        "total_variation_to_data": round(total_variation(hist, data_hist), 4),
        "class_entropy_nats": round(entropy(hist), 4),
    }
    atomic_write_json(out / "summary.json", summary)
    say(f"class mix of samples vs data: total variation {summary['total_variation_to_data']:.3f}, "
        f"entropy {summary['class_entropy_nats']:.3f} nats (uniform over 10 = {np.log(10):.3f})")
    say(f"samples: {out / 'samples.png'}   summary: {out / 'summary.json'}   run: {out / 'pretrain'}")
    return summary
