"""The cost of an align step with --rollout-pool P against fresh rollouts every step, in the same process.

Both loops are flowsteer's Trainer with the same model, batch, optimiser and reward; they differ only in
``rollout_pool``.  Each timed chunk is one whole phase of K = --refresh-every steps, so the pool's chunk pays
its draw (P rollouts and reward calls) once, as a run does.  Chunks of the two alternate (the machine is noisy;
the ratio holds).

    python benchmarks/bench_rollout_pool.py [--base RUN] [--reward SPEC] [--batch 64] [--phase 50] [--pool 1024]

Default base: the 8x8 digits (pretrained here, 300 steps, when --base has no run).  The MNIST CPU setting of
benchmarks/mnist_paper.py: ``--base OUT/base --reward even-mnist`` with FLOWSTEER_DATA_DIR set.  Prints ms per
step of each and the ratio pool / fresh; the rollouts' share of a fresh step is what the pool saves, less its
draw (P / (K B) of a fresh phase's rollouts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from flowsteer import TrainConfig, load_run
from flowsteer.methods.orw import AlignConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align_step import FlowsteerAlign, digits_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/digits")
    ap.add_argument("--reward", default="even-digits")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--phase", type=int, default=50, help="K: steps per refresh, one timed chunk")
    ap.add_argument("--pool", type=int, default=1024, help="P of the pooled loop")
    ap.add_argument("--phases", type=int, default=2, help="timed phases of each loop")
    args = ap.parse_args()
    base_dir = digits_base(args.base)
    base = load_run(base_dir)
    train = TrainConfig(batch_size=args.batch, steps=1, lr=1e-3, warmup_steps=50, ema_decay=0.0, log_every=10**9)
    loops = {name: FlowsteerAlign(base, AlignConfig(base=str(base_dir), reward=args.reward, refresh_every=args.phase,
                                          rollout_pool=pool, rollout_solver="euler",  # as when measured
                                          train=train))
             for name, pool in (("fresh", 0), ("pool", args.pool))}
    for loop in loops.values():  # the first phase (warm-up of both) is not timed
        loop.run(args.phase)
    spent: dict[str, list[float]] = {name: [] for name in loops}
    for i in range(args.phases):
        for name in (("fresh", "pool") if i % 2 == 0 else ("pool", "fresh")):
            start = time.perf_counter()
            loops[name].run(args.phase)
            spent[name].append((time.perf_counter() - start) / args.phase)
    ms = {name: statistics.median(v) * 1e3 for name, v in spent.items()}
    print(f"base={base_dir} reward={args.reward} batch={args.batch} K={args.phase} P={args.pool} "
          f"threads={torch.get_num_threads()}")
    print(f"fresh rollouts {ms['fresh']:.0f} ms/step, rollout pool {ms['pool']:.0f} ms/step (its draw included)")
    print(f"ratio pool / fresh = {ms['pool'] / ms['fresh']:.3f}  (speed-up {ms['fresh'] / ms['pool']:.2f}x)")


if __name__ == "__main__":
    main()
