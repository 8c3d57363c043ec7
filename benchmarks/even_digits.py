"""Acceptance figures of issue 3 on the even-digits task, measured through the CLI.

    python benchmarks/even_digits.py [--base runs/digits] [--out runs/even] [--budget 0.13]

Runs (each 1500 steps, batch 256, the CLI defaults):
  flowsteer align --base BASE --reward even-digits --out OUT/default                 (documented default alpha)
  flowsteer align --base BASE --reward even-digits --out OUT/sweep/alpha-A --alpha A  for A in 0, 0.1, 0.3, 1
  flowsteer align --base BASE --reward even-digits --out OUT/budget --w2-budget EPS
The four alpha runs are the runs `--alpha 0,0.1,0.3,1` would make (same seed, same folders); they are
launched one by one so that `--workers` runs (default 2, one torch thread each) go side by side, and
OUT/sweep/sweep.json and pareto.png are then written from them.  Each run then samples 2000 digits
(`flowsteer sample`, Heun, 100 NFE), scored by a logistic-regression classifier fitted on the digits data:
P(even) and the entropy of the predicted-class histogram (ln 5 = 1.609 is uniform over the five even
digits).  The reward uses the same classifier, so a 5-nearest-neighbour classifier on the digits is
reported beside it as an independent check against reward hacking.  Writes OUT/summary.json and
OUT/collapse_vs_default.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = ("0", "0.1", "0.3", "1")


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args: str, threads_env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowsteer", *args, "--quiet"], check=True, cwd=ROOT,
                   env={**os.environ, **(threads_env or {})})
    return time.perf_counter() - start


def score(run: Path, clf, knn, threads_env: dict | None = None) -> dict:
    from flowsteer.metrics import class_histogram, entropy

    samples = run / "samples_2000.npy"
    cli("sample", "--model", str(run), "--n", "2000", "--seed", "7", "--out", str(samples), threads_env=threads_env)
    x = np.clip(np.load(samples).reshape(2000, -1), -1, 1)
    pred = clf.predict(x)
    hist = class_histogram(pred, 10)
    knn_pred = knn.predict(x)
    return {
        "p_even": float(np.isin(pred, [0, 2, 4, 6, 8]).mean()),
        "class_entropy": entropy(hist),
        "class_histogram": [round(float(v), 4) for v in hist],
        "reward_mean": float(clf.predict_proba(x)[:, [0, 2, 4, 6, 8]].sum(1).mean()),
        "knn_p_even": float(np.isin(knn_pred, [0, 2, 4, 6, 8]).mean()),
        "knn_class_entropy": entropy(class_histogram(knn_pred, 10)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/digits")
    ap.add_argument("--out", default="runs/even")
    ap.add_argument("--budget", type=float, default=0.13)
    ap.add_argument("--workers", type=int, default=2, help="align runs side by side, one torch thread each")
    args = ap.parse_args()
    from flowsteer.methods.sweep import sweep_run_dir, write_sweep_summary
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    d = load_digits()
    data = d.images.reshape(-1, 64) / 8.0 - 1.0
    clf = LogisticRegression(max_iter=5000).fit(data, d.target)
    knn = KNeighborsClassifier(5).fit(data, d.target)
    base, out = Path(args.base), Path(args.out)
    times = {}
    if not (base / "model.safetensors").exists():
        times["pretrain"] = cli("pretrain", "--data", "digits", "--out", str(base))
    align = ["align", "--base", str(base), "--reward", "even-digits"]
    jobs = {"default": (out / "default", []), "budget": (out / "budget", ["--w2-budget", str(args.budget)])}
    for a in ALPHAS:
        jobs[f"alpha={a}"] = (sweep_run_dir(out / "sweep", float(a)), ["--alpha", a])
    env = ONE_THREAD if args.workers > 1 else None

    def job(name: str) -> tuple[str, dict]:
        if name == "base":
            return name, score(base, clf, knn, env)
        run, extra = jobs[name]
        times[name] = cli(*align, "--out", str(run), *extra, threads_env=env)
        return name, score(run, clf, knn, env)

    # six align runs make three full rounds of two; the base's scoring (seconds) comes last
    with ThreadPoolExecutor(args.workers) as pool:
        results = dict(pool.map(job, [*jobs, "base"]))
    results = {k: results[k] for k in ["base", "default", *(f"alpha={a}" for a in ALPHAS), "budget"]}
    write_sweep_summary(out / "sweep", [sweep_run_dir(out / "sweep", float(a)) for a in ALPHAS])
    results["budget"]["final_alpha"] = json.loads((out / "budget" / "final_metrics.json").read_text())["final_alpha"]
    summary = {"results": results, "seconds": times, "budget_eps": args.budget}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'run':<10} {'P(even)':>8} {'entropy':>8} {'reward':>8} {'kNN P(even)':>12} {'kNN entropy':>12}")
    for name, r in results.items():
        print(f"{name:<10} {r['p_even']:>8.3f} {r['class_entropy']:>8.3f} {r['reward_mean']:>8.3f} "
              f"{r['knn_p_even']:>12.3f} {r['knn_class_entropy']:>12.3f}")
    print("seconds:", {k: round(v, 1) for k, v in times.items()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowsteer.plots import image_grid

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=100)
    for ax, (name, run) in zip(axes, [("alpha = 0 (orw): collapse", out / "sweep" / "alpha-0"),
                                       ("default alpha = 0.15 (orw-w2)", out / "default")]):
        x = np.load(run / "samples_2000.npy")[:100]
        ax.imshow(image_grid(x)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "collapse_vs_default.png")


if __name__ == "__main__":
    main()
