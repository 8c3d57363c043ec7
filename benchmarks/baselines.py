"""ORW-CFM-W2 against the field's baselines on even digits, at one reward-call budget (issue 20).

    python benchmarks/baselines.py [--base runs/digits] [--out runs/baselines] [--reward-calls 76800]

Every method fine-tunes the same digits base toward ``even-digits`` with batch 256 until it has spent the same
number of reward calls (RWR: its fixed set of 4096 scored samples, then as many steps as ORW), then samples
2000 digits (Heun, 25 steps, seed 7) scored by a logistic-regression classifier fitted on the digits data:
P(even), the entropy of the predicted-class histogram (ln 5 = 1.609 is uniform over the even digits) and W2
to the base's samples from the same noise.  Counted while training: reward calls (samples scored) and model
evaluations (per-sample forward passes of the velocity network, in rollouts and in training), and seconds
per step and per 1000 reward calls, one torch thread.  Settings are the CLI defaults plus those in METHODS;
no method is tuned here (the issue's small per-method sweeps are not run).  Writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

METHODS = {  # name -> AlignConfig fields (besides base, reward and steps), in the order they run
    "orw-w2": {"method": "orw-w2"},
    "rwr": {"method": "rwr"},
    "raft": {"method": "raft"},
    "nft": {"method": "nft", "refresh_every": 10},
    "flow-grpo-fast (W=2)": {"method": "flow-grpo", "sde_window": 2},
    # Flow-GRPO's GenEval KL weight 0.04 divides by g^2, ours by g^2 h (h = 1/10): the same pull is 0.004 here
    "flow-grpo-fast (W=2, kl 0.004)": {"method": "flow-grpo", "sde_window": 2, "kl_beta": 0.004},
    "flow-grpo": {"method": "flow-grpo"},
    "orw (alpha=0)": {"method": "orw"},
    # the other speed option: training rollouts of the evaluation's length instead of 10 steps
    "flow-grpo-fast (W=2, 25 training steps)": {"method": "flow-grpo", "sde_window": 2, "rollout_steps": 25},
}


class Counter:
    reward_calls = 0
    model_evals = 0
    on = False


def counting_reward(reward):
    def even_digits(x, **cond):
        Counter.reward_calls += x.shape[0]
        return reward(x, **cond)
    return even_digits


def patch_forward() -> None:
    from flowsteer.models.mlp import MLPVelocity

    forward = MLPVelocity.forward

    def counted(self, t, x, *args, **kwargs):
        if Counter.on:
            Counter.model_evals += x.shape[0]
        return forward(self, t, x, *args, **kwargs)
    MLPVelocity.forward = counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/digits")
    ap.add_argument("--out", default="runs/baselines")
    ap.add_argument("--reward-calls", type=int, default=76_800, help="budget (ORW's acceptance run: 384000)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--methods", default=";".join(METHODS), help="semicolon-separated names of METHODS")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from flowsteer.config import TrainConfig, align_train_defaults
    from flowsteer.methods.configs import AlignConfig
    from flowsteer.methods.orw import align
    from flowsteer.metrics import class_histogram, entropy, wasserstein2
    from flowsteer.rewards import build_reward
    from flowsteer.runs import load_run

    patch_forward()
    d = load_digits()
    clf = LogisticRegression(max_iter=5000).fit(d.images.reshape(-1, 64) / 8.0 - 1.0, d.target)

    def digits(run) -> np.ndarray:
        x = run.sample(2000, solver="heun", steps=25, seed=7).x
        return np.clip(x.reshape(2000, -1).cpu().numpy(), -1, 1)

    base_x = digits(load_run(args.base))
    base_pred = clf.predict(base_x)
    rows = [{"method": "base", "p_even": float(np.isin(base_pred, [0, 2, 4, 6, 8]).mean()),
             "class_entropy": entropy(class_histogram(base_pred, 10)), "w2_to_base": 0.0}]
    out = Path(args.out)
    b = args.batch_size
    warm = dataclasses.replace(align_train_defaults(), steps=2, batch_size=b)  # one-off costs (reward model, kernels)
    align(AlignConfig(base=args.base, reward="even-digits", train=warm), None, progress="quiet", evaluate=lambda t: {})
    for name in args.methods.split(";"):
        fields = METHODS[name]
        updates = fields.get("rollout_updates", AlignConfig.rollout_updates) if fields["method"] == "flow-grpo" else 1
        steps = args.reward_calls // b * updates  # flow-grpo scores one batch per round of `updates` steps
        train = dataclasses.replace(align_train_defaults(), steps=steps, batch_size=b, log_every=max(1, steps // 10))
        cfg = AlignConfig(base=args.base, reward=counting_reward(build_reward("even-digits")), train=train, **fields)
        assert isinstance(train, TrainConfig) and not cfg.validate(), cfg.validate()
        Counter.reward_calls = Counter.model_evals = 0
        Counter.on = True
        start = time.perf_counter()
        run = align(cfg, None, progress="quiet", evaluate=lambda trainer: {})  # in memory; scored below
        seconds = time.perf_counter() - start
        Counter.on = False
        x = digits(run)
        pred = clf.predict(x)
        rows.append({"method": name, "p_even": float(np.isin(pred, [0, 2, 4, 6, 8]).mean()),
                     "class_entropy": entropy(class_histogram(pred, 10)) + 0.0, "w2_to_base": wasserstein2(x, base_x),
                     "reward_calls": Counter.reward_calls, "model_evals": Counter.model_evals, "steps": steps,
                     "seconds": round(seconds, 1), "seconds_per_step": round(seconds / steps, 4),
                     "seconds_per_1000_reward_calls": round(1000 * seconds / max(Counter.reward_calls, 1), 2)})
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r for r in rows if r["method"] == "orw-w2"), None)
    print("\n| method | P(even) | class entropy | W2 to base | reward calls | model evals | s/step | "
          "s / 1000 reward calls | time vs ORW-CFM-W2 |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref and "seconds" in r else ""
        print(f"| {r['method']} | {r['p_even']:.3f} | {r['class_entropy']:.3f} | {r['w2_to_base']:.3f} | "
              f"{r.get('reward_calls', '')} | {r.get('model_evals', '')} | {r.get('seconds_per_step', '')} | "
              f"{r.get('seconds_per_1000_reward_calls', '')} | {ratio} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"base": args.base, "reward_calls_budget": args.reward_calls,
                                                  "batch_size": b, "device": "cpu, 1 thread", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
