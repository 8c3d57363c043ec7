"""The weight-alignment bug's effect: ORW-CFM-W2 with the OT coupling, weights aligned vs misaligned.

    python benchmarks/weight_alignment.py [--base runs/digits] [--out runs/weight-alignment]

With an OT coupling the minibatch is re-paired after the weights were computed.  The released code kept
the weights in rollout order (torchcfm issue #142), so each weight lands on another sample; flowsteer
re-orders them with the pairs.  Two `flowsteer align` runs on even digits (default alpha, 1500 steps,
`--coupling ot`), the second with `--misaligned-weights`, run side by side (one thread each).  Each is
then scored with `flowsteer evaluate --reward even-digits --n 2000` (Euler, 50 NFE).  Writes
OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/digits")
    ap.add_argument("--out", default="runs/weight-alignment")
    args = ap.parse_args()
    base, out = Path(args.base), Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if not (base / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "flowsteer", "pretrain", "--data", "digits", "--out", str(base), "--quiet"],
                       check=True, cwd=ROOT)
    start = time.perf_counter()
    runs = {"aligned": [], "misaligned": ["--misaligned-weights"]}
    procs = {}
    for name, extra in runs.items():
        procs[name] = subprocess.Popen([sys.executable, "-m", "flowsteer", "align", "--base", str(base), "--reward",
                                        "even-digits", "--coupling", "ot", "--rollout-solver", "euler",  # the default when measured
                                        "--out", str(out / name), "--quiet", *extra],
                                       cwd=ROOT, env=env)
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"the {name} run failed")
    results = {}
    for name in runs:
        subprocess.run([sys.executable, "-m", "flowsteer", "evaluate", "--model", str(out / name), "--reward",
                        "even-digits", "--reference", str(base), "--n", "2000", "--nfe", "50", "--json",
                        str(out / name / "evaluation.json"), "--quiet"], check=True, cwd=ROOT)
        e = json.loads((out / name / "evaluation.json").read_text())
        results[name] = {"p_even_reward": e["metrics"]["reward_mean"], "class_entropy": e["metrics"]["class_entropy"],
                         "w2_to_base": e["metrics"]["w2_to_reference"],
                         "class_histogram": e["metrics"]["class_histogram"]}
    summary = {"results": results, "seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, r in results.items():
        print(f"{name:<11} reward (P even) {r['p_even_reward']:.3f}  class entropy {r['class_entropy']:.3f}  "
              f"W2 to base {r['w2_to_base']:.3f}")
    print(f"{summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
