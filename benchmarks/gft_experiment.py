"""GFT vs SFT experiment of issue 4: two shifts x {full, 64 target samples} x {sft, gft} x {independent, ot} x 3 seeds.

    python benchmarks/gft_experiment.py [--out runs/gft-exp] [--workers 2]

Shifts: 8 Gaussians -> moons (bases pretrained with the CLI defaults) and digits 0-4 -> digits 5-9.
Each run is `adapt()` with the defaults except the steps (moons 1500, digits 1000) and
eval_every = steps / 4.  It reports W2 and Frechet distance to held-out target samples at NFE
{1, 2, 4, 8, 50} (Euler), path length and straightness (100 Euler steps), and stability: the std of
W2@50 over the last 3 evaluations and its Spearman correlation with the step.  It also computes, per
shift, the smallest path ratio any target-reaching model can show (see ideal_path_lengths).  Writes OUT/results.json
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


def one_run(job):
    """One adapt() run in memory; its final metrics include the stability figures (std, Spearman of W2@50)."""
    import torch

    torch.set_num_threads(1)
    from flowsteer.config import adapt_train_defaults
    from flowsteer.methods import gft

    shift, base, target, steps, n_target, method, coupling, seed = job
    train = adapt_train_defaults()
    train.steps, train.seed = steps, seed
    start = time.perf_counter()
    run = gft.adapt(gft.AdaptConfig(base=base, target=target, method=method, coupling=coupling, n_target=n_target,
                                    eval_every=steps // 4, eval_nfes=(1, 2, 4, 8, 50), train=train),
                    None, progress="quiet")
    final = run.config["final"]
    return {"shift": shift, "n_target": n_target or "full", "method": method, "coupling": coupling, "seed": seed,
            "seconds": time.perf_counter() - start, **{k: v for k, v in final.items() if isinstance(v, float)}}


def ideal_path_lengths(base_dir: str, target: str, *, n_noise: int = 1000, max_target: int = 2000) -> dict:
    """What path lengths are possible at all, for a model that reaches the target's training samples exactly.

    * ``w1_bound``: W1(N(0, I), target) by exact OT between ``k * n`` noise draws and the ``n`` target
      points (cost ||x1 - x0||).  Every flow that carries N(0, I) onto the target has mean path length
      >= W1, because a path is at least as long as its chord.
    * ``independent_flow``: the mean path length (100 Euler steps) of the exact marginal flow of the
      independent coupling to the empirical target, u_t(x) = (E[x1 | x_t = x] - x) / (1 - t) with the
      softmax posterior over target points: what SFT with the independent coupling converges to.
    Their ratio is the smallest "GFT+OT / SFT+independent" path ratio a target-reaching model can show.
    Also the W2 noise floor: W2 between the training targets and the held-out ones (same sizes as the
    evaluation uses).
    """
    import ot
    import torch

    from flowsteer.data import load_data
    from flowsteer.metrics import wasserstein2
    from flowsteer.runs import load_run

    base = load_run(base_dir)
    data = load_data(target, normalize="none")
    g = torch.Generator().manual_seed(0)
    y = base.normalizer.encode(data.train.x).reshape(len(data.train.x), -1).double()
    y = y[torch.randperm(len(y), generator=g)[:max_target]]
    n, k = len(y), max(1, 6000 // len(y))
    x0 = torch.randn(n * k, y.shape[1], generator=g, dtype=torch.float64)
    plan = ot.emd(torch.full((n * k,), 1.0 / (n * k), dtype=torch.float64), torch.full((n,), 1.0 / n, dtype=torch.float64),
                  torch.cdist(x0, y), numItermax=10**7)
    w1 = float((plan * torch.cdist(x0, y)).sum())
    x = torch.randn(n_noise, y.shape[1], generator=g, dtype=torch.float64)
    length = torch.zeros(n_noise, dtype=torch.float64)
    for i in range(100):
        t = i / 100
        post = torch.softmax(-torch.cdist(x, t * y) ** 2 / (2 * (1 - t) ** 2), dim=1)
        v = (post @ y - x) / (1 - t)
        length += v.norm(dim=1) / 100
        x = x + v / 100
    held = data.heldout.x[torch.randperm(len(data.heldout.x), generator=g)[:1000]]
    floor = wasserstein2(data.train.x[torch.randperm(len(data.train.x), generator=g)[:1000]], held)
    return {"w1_bound": w1, "independent_flow": float(length.mean()), "best_ratio": w1 / float(length.mean()),
            "w2_floor_train_vs_heldout": floor, "n_heldout": int(len(held))}


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
        for row in pool.imap_unordered(one_run, jobs):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['shift']} n={row['n_target']} {row['method']}/{row['coupling']} "
                  f"seed {row['seed']}: W2@4 {row['w2_to_target_nfe4']:.3f} path {row.get('path_length', float('nan')):.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    bounds = {shift: ideal_path_lengths(bases[shift], SHIFTS[shift][1]) for shift in SHIFTS}
    (out / "results.json").write_text(json.dumps({"rows": rows, "total_seconds": total, "bounds": bounds}, indent=1))
    keys = ["w2_to_target_nfe1", "w2_to_target_nfe2", "w2_to_target_nfe4", "w2_to_target_nfe8", "w2_to_target_nfe50", "fd_to_target_nfe1", "fd_to_target_nfe4", "fd_to_target_nfe50", "path_length",
            "straightness", "w2_to_target_nfe50_last3_std", "w2_to_target_nfe50_spearman_step"]
    print(f"\ntotal {total / 60:.1f} min (bases included; the bounds below took {time.perf_counter() - t0 - total:.0f} s more)\n")
    for shift, b in bounds.items():
        print(f"{shift}: W1 bound {b['w1_bound']:.3f}, exact independent flow {b['independent_flow']:.3f}, "
              f"best possible path ratio {b['best_ratio']:.3f}; W2 floor train vs {b['n_heldout']} held-out "
              f"{b['w2_floor_train_vs_heldout']:.3f}")
    print("| shift | n | method | coupling | " + " | ".join(keys) + " |")
    for shift, n, m, c in itertools.product(SHIFTS, ("full", 64), ("sft", "gft"), ("independent", "ot")):
        sel = [r for r in rows if (r["shift"], r["n_target"], r["method"], r["coupling"]) == (shift, n, m, c)]
        cells = [f"{np.mean([r[k] for r in sel]):.3f} ± {np.std([r[k] for r in sel]):.3f}" for k in keys]
        print(f"| {shift} | {n} | {m} | {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
