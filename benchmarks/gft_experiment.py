"""GFT vs SFT experiment of issue 4: two shifts x {full, 64 target samples} x {sft, gft} x {independent, ot} x 3 seeds.

    python benchmarks/gft_experiment.py [--out runs/gft-exp] [--workers 2]

Shifts: 8 Gaussians -> moons (bases pretrained with the CLI defaults) and digits 0-4 -> digits 5-9.
Each run is `adapt()` with the defaults except the steps (moons 1500, digits 1000) and
eval_every = steps / 4.  It reports W2 and Frechet distance to held-out target samples at NFE
{1, 2, 4, 8, 50} (Euler), path length and straightness (100 Euler steps), and stability: the std of
W2@50 over the last 3 evaluations and its Spearman correlation with the step.  Writes OUT/results.json
and prints a table of mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

SHIFTS = {"8g->moons": ("8gaussians", "moons", 1500), "digits0-4->5-9": ("digits:0-4", "digits:5-9", 1000)}


def run_with_history(job):
    """Like one_run, plus the W2@50 history from an in-memory metrics log (for the stability figures)."""
    import torch

    torch.set_num_threads(1)
    from scipy.stats import spearmanr

    from flowsteer.config import adapt_train_defaults
    from flowsteer.methods import gft

    shift, base, target, steps, n_target, method, coupling, seed = job
    history = []
    original = gft.AdaptEvaluator.__call__

    def recording(self, trainer):
        out = original(self, trainer)
        history.append((trainer.step, out["w2_nfe50"]))
        return out

    gft.AdaptEvaluator.__call__ = recording
    train = adapt_train_defaults()
    train.steps, train.seed = steps, seed
    start = time.perf_counter()
    run = gft.adapt(gft.AdaptConfig(base=base, target=target, method=method, coupling=coupling, n_target=n_target,
                                    eval_every=steps // 4, eval_nfes=(1, 2, 4, 8, 50), train=train),
                    None, progress="quiet")
    seconds = time.perf_counter() - start
    gft.AdaptEvaluator.__call__ = original
    final = run.config["final"]
    after = [w for s, w in history if s > 0]
    steps_ = [s for s, _ in history if s > 0]
    rho = float(spearmanr(steps_, after).statistic) if len(after) > 2 else float("nan")
    return {"shift": shift, "n_target": n_target or "full", "method": method, "coupling": coupling, "seed": seed,
            "seconds": seconds, "w2_last3_std": float(np.std(after[-3:])), "w2_spearman_step": rho,
            **{k: v for k, v in final.items() if isinstance(v, float)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gft-exp")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from flowsteer import PretrainConfig, pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bases = {}
    for shift, (source, _, _) in SHIFTS.items():
        base = out / f"base-{source.replace(':', '_')}"
        if not (base / "model.safetensors").exists():
            pretrain(PretrainConfig(data=source), base, progress="quiet")
        bases[shift] = str(base)
    print(f"bases ready after {time.perf_counter() - t0:.0f} s", flush=True)
    jobs = [(shift, bases[shift], SHIFTS[shift][1], SHIFTS[shift][2], n, m, c, s)
            for shift, n, m, c, s in itertools.product(SHIFTS, (None, 64), ("sft", "gft"), ("independent", "ot"), (0, 1, 2))]
    with Pool(args.workers) as pool:
        rows = []
        for row in pool.imap_unordered(run_with_history, jobs):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['shift']} n={row['n_target']} {row['method']}/{row['coupling']} "
                  f"seed {row['seed']}: W2@4 {row['w2_nfe4']:.3f} path {row.get('path_length', float('nan')):.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps({"rows": rows, "total_seconds": total}, indent=1))
    keys = ["w2_nfe1", "w2_nfe2", "w2_nfe4", "w2_nfe8", "w2_nfe50", "fd_nfe4", "fd_nfe50", "path_length",
            "straightness", "w2_last3_std", "w2_spearman_step"]
    print(f"\ntotal {total / 60:.1f} min (bases included)\n")
    print("| shift | n | method | coupling | " + " | ".join(keys) + " |")
    for shift, n, m, c in itertools.product(SHIFTS, ("full", 64), ("sft", "gft"), ("independent", "ot")):
        sel = [r for r in rows if (r["shift"], r["n_target"], r["method"], r["coupling"]) == (shift, n, m, c)]
        cells = [f"{np.mean([r[k] for r in sel]):.3f} ± {np.std([r[k] for r in sel]):.3f}" for k in keys]
        print(f"| {shift} | {n} | {m} | {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
