"""bf16 against fp32 on the even-digits acceptance run (issue 13), on the CPU.

Pretrains the digits base once (3000 steps, as the demo does), then runs the default ORW-CFM-W2 align
toward even digits twice, identical but for ``--precision fp32`` / ``bf16`` (two worker processes, one
torch thread each), and evaluates both with ``flowsteer evaluate`` (1000 samples, seed 0).

    python benchmarks/precision_digits.py [--out runs/precision] [--steps 1500]

Stated tolerance: |P(even) bf16 - fp32| <= 0.03 and |class entropy bf16 - fp32| <= 0.15 nats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

TOLERANCE = {"reward_mean": 0.03, "class_entropy": 0.15}


def _align(base: str, out: str, precision: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from flowsteer import AlignConfig, EvaluationConfig, align, evaluate
    from flowsteer.config import align_train_defaults

    start = time.perf_counter()
    train = dataclasses.replace(align_train_defaults(), steps=steps, precision=precision, device="cpu")
    # Euler rollouts: the default when its figures were measured (Heun since session 7)
    align(AlignConfig(base=base, reward="even-digits", rollout_solver="euler", train=train), out, progress="quiet")
    seconds = time.perf_counter() - start
    figures = evaluate(EvaluationConfig(model=out, reward="even-digits", reference=base, n=1000, nfes=(50,),
                                        device="cpu"))["metrics"]
    return {"precision": precision, "seconds": round(seconds, 1), **{k: figures[k] for k in
            ("reward_mean", "class_entropy", "top_class_share", "w2_to_reference")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    out = Path(args.out)
    base = out / "base-digits"
    if not (base / "model.safetensors").is_file():
        from flowsteer import PretrainConfig, TrainConfig, pretrain

        pretrain(PretrainConfig(data="digits", train=TrainConfig(steps=3000)), base, progress="quiet")
    jobs = [(str(base), str(out / f"align-{p}"), p, args.steps) for p in ("fp32", "bf16")]
    for _, run, _, _ in jobs:
        if Path(run).exists():
            import shutil

            shutil.rmtree(run)
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(_align, *zip(*jobs)))
    by = {r["precision"]: r for r in rows}
    diffs = {k: abs(by["bf16"][k] - by["fp32"][k]) for k in TOLERANCE}
    held = all(diffs[k] <= TOLERANCE[k] for k in TOLERANCE)
    for r in rows:
        print(f"{r['precision']:>5}: P(even) {r['reward_mean']:.3f}, class entropy {r['class_entropy']:.3f} nats, "
              f"top class {r['top_class_share']:.3f}, W2 to base {r['w2_to_reference']:.3f}, {r['seconds']:.0f} s")
    print(f"|bf16 - fp32|: P(even) {diffs['reward_mean']:.3f} (tolerance {TOLERANCE['reward_mean']}), "
          f"entropy {diffs['class_entropy']:.3f} (tolerance {TOLERANCE['class_entropy']}) -> "
          f"{'within tolerance' if held else 'OUTSIDE tolerance'}")
    (out / "precision.json").write_text(json.dumps({"rows": rows, "diffs": diffs, "tolerance": TOLERANCE,
                                                    "held": held}, indent=2) + "\n")


if __name__ == "__main__":
    main()
