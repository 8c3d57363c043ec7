"""ORW-CFM-W2 against the field's baselines at one reward-call budget, with small stated tuning sweeps (issue 20).

Full runs (one process at a time on an otherwise idle machine).  Durations are rough CPU estimates (one torch
thread), extrapolated from the --quick runs and the per-step times of docs/results.md (ORW-CFM-W2 0.052 s/step
at batch 256 on digits); not measured at full size:

    python benchmarks/baselines.py --task digits --out runs/baselines      # ~35 min: 16 runs of 1500 steps (flow-grpo 3000)
    python benchmarks/baselines.py --task 8gaussians --out runs/baselines  # ~15 min: 16 runs of 1500 steps (flow-grpo 3000)
    python benchmarks/baselines.py --task sd3-tiny --out runs/baselines    # ~15 min: 16 LoRA runs of 200 steps (flow-grpo 400)
    python benchmarks/baselines.py --task cost --out runs/baselines        # ~10 min: 18 processes of 40 steps
    flowsteer report runs/baselines/digits --out runs/baselines/report     # the "Methods at one budget" section

(``--base runs/digits`` reuses the digits base of ``make reproduce`` instead of pretraining one for 4000 steps.)

Smoke runs: add ``--quick`` (budgets of 2560 reward calls, 64 for sd3-tiny; 256 evaluation samples).  Measured
here (2 shared CPU cores, one thread): digits 0.4 min, 8gaussians 0.3 min, sd3-tiny 0.6 min, cost 1.8 min.

Tasks (every method starts from the same base, scores with the same reward and spends the same number of reward
calls, ``--reward-calls``; RWR scores its fixed set of ``min(4096, budget)`` reference samples once and then
trains as many steps as ORW; Flow-GRPO trains ``--rollout-updates`` (2) steps per scored round):

* ``digits``: an unconditional MLP on sklearn's 8x8 digits (``--base``, else pretrained here), reward
  ``even-digits``.  Figures on 2000 samples (Heun, 25 steps, seed 7) scored by a logistic regression fitted on
  the digits data (independent of the reward's classifier): P(even), class entropy (nats; ln 5 = 1.61 is uniform
  over the even digits), W2 and Frechet distance to the base's samples from the same noise.
* ``8gaussians``: an MLP on the 8-Gaussian toy (pretrained here), reward ``gaussian-modes:0,3,5``
  (:mod:`flowsteer.rewards.modes`): mean reward, and how many of the 3 rewarded modes hold >= 10 % of the
  samples (nearest-centre assignment), W2 to the base.
* ``sd3-tiny``: the tiny random-weight SD3 pipeline with LoRA rank 4 and the tiny CLIP reward
  (``clip:a red cat;contrast=a photo``; :mod:`flowsteer.models.tiny`, nothing downloaded): mean reward and the
  mean pairwise distance of the images (diversity).  Its weights are random: it measures the machinery and its
  cost, not image quality.
* ``cost``: seconds per step, seconds per 1000 reward calls and peak memory of every method at its default
  settings at three model scales (MLP on digits, the compact UNet on digits, SD3-tiny LoRA), each run in its own
  process (``python -m flowsteer align``) so that the peak memory is its own, as ratios to ORW-CFM-W2 measured in
  the same call.  Seconds per step: steady state, after two warm-up steps (``metrics.jsonl``'s ``elapsed_s``);
  seconds per 1000 reward calls: the whole run's ``train_seconds`` (warm-up and RWR's fixed set included) over
  its reward calls.  Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS (which
  includes torch itself, so CPU ratios sit near 1).  The device's name is printed.

Tuning (stated before any run): each method sweeps 3 values of its main knob - ORW-CFM-W2 alpha {0.05, 0.15, 0.5},
RWR tau {2, 5, 10}, RAFT kept fraction {0.1, 0.25, 0.5}, Flow-GRPO-Fast (window 2) kl_beta {0, 0.004, 0.04}, NFT
nft_beta {0.1, 0.5, 1}; NFT with DiffusionNFT's stabilisers (``nft-stable``: --nft-adaptive-weight, --nft-old-decay
0.5; added after plain NFT diverged at the full budget) the same nft_beta values; ORW (alpha = 0) has no knob.  Rule: the best setting is the highest task reward among
those whose diversity clears the task's floor (digits: class entropy >= 1.0 nats; 8gaussians: all 3 rewarded modes
held; sd3-tiny: pairwise distance >= half the base's); if none clears it, the most diverse one, flagged.
Budgets are read from each run's own counts (``final``: reward_calls, model_evals, train_seconds, peak_memory_mb;
:mod:`flowsteer.methods.budget`).  Each task writes OUT/TASK/summary.json and one sweep folder per method, so
``flowsteer report OUT/TASK`` shows them side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowsteer.io import atomic_write_json  # no bare NaN, never half a file

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name -> (AlignConfig fields, the knob it is tuned on, the stated values)
    "orw-w2": ({"method": "orw-w2"}, "alpha", (0.05, 0.15, 0.5)),
    "orw": ({"method": "orw"}, None, ()),
    "rwr": ({"method": "rwr"}, "tau", (2.0, 5.0, 10.0)),
    "raft": ({"method": "raft"}, "raft_fraction", (0.1, 0.25, 0.5)),
    "flow-grpo": ({"method": "flow-grpo", "sde_window": 2}, "kl_beta", (0.0, 0.004, 0.04)),
    "nft": ({"method": "nft", "refresh_every": 10}, "nft_beta", (0.1, 0.5, 1.0)),
    # the NFT loss with DiffusionNFT's two stabilisers (added after "nft" diverged at the full budget)
    "nft-stable": ({"method": "nft", "refresh_every": 10, "nft_adaptive_weight": True, "nft_old_decay": 0.5},
                   "nft_beta", (0.1, 0.5, 1.0)),
}
# calls: the reward-call budget of every method (digits: ORW-CFM-W2's acceptance run, 1500 steps of 256);
# eval_n: the task's own samples per run; train_eval: (samples, Heun steps) of align's evaluations (start and end)
FULL = {"digits": dict(calls=384_000, batch=256, base_steps=4000, eval_n=2000, train_eval=(512, 25)),
        "8gaussians": dict(calls=384_000, batch=256, base_steps=3000, eval_n=2000, train_eval=(512, 25)),
        "sd3-tiny": dict(calls=3_200, batch=16, base_steps=0, eval_n=256, train_eval=(128, 10))}
QUICK = {"digits": dict(calls=2_560, batch=128, base_steps=300, eval_n=256, train_eval=(64, 10)),
         "8gaussians": dict(calls=2_560, batch=128, base_steps=300, eval_n=256, train_eval=(64, 10)),
         "sd3-tiny": dict(calls=64, batch=8, base_steps=0, eval_n=32, train_eval=(8, 4))}
PROMPT = "a red cat"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s))"


# --------------------------------------------------------------------------- tasks: base, reward, figures


def pretrain_base(out: Path, data: str, steps: int, **model) -> Path:
    from flowsteer import PretrainConfig, TrainConfig, pretrain

    if not (out / "config.json").is_file():
        pretrain(PretrainConfig(data=data, train=TrainConfig(steps=steps, log_every=max(1, steps // 5)), **model), out,
                 progress="quiet")
    return out


def sd3_files(root: Path) -> tuple[Path, Path]:
    from flowsteer.models.tiny import save_tiny_clip, save_tiny_sd3_pipeline

    sd3, clip = root / "tiny-sd3", root / "tiny-clip"
    if not (sd3 / "model_index.json").is_file():
        save_tiny_sd3_pipeline(sd3)
    if not (clip / "config.json").is_file():
        save_tiny_clip(clip)
    return sd3, clip


class Task:
    """A task's base, reward, extra align options and its figures of a sampled run."""

    def __init__(self, name: str, args: argparse.Namespace, budget: dict) -> None:
        self.name, self.n = name, budget["eval_n"]
        bases = Path(args.out) / "bases"
        self.extra: dict = {}
        if name == "digits":
            self.base = args.base or str(pretrain_base(bases / "digits", "digits", budget["base_steps"]))
            self.reward, self.floor, self.diversity = "even-digits", 1.0, "class_entropy"
            from sklearn.datasets import load_digits
            from sklearn.linear_model import LogisticRegression

            d = load_digits()
            self.clf = LogisticRegression(max_iter=5000).fit(d.images.reshape(-1, 64) / 8.0 - 1.0, d.target)
        elif name == "8gaussians":
            self.base = args.base or str(pretrain_base(bases / "8gaussians", "8gaussians", budget["base_steps"]))
            self.reward, self.floor, self.diversity = "gaussian-modes:0,3,5", 3, "rewarded_modes_held"
        else:
            sd3, clip = sd3_files(bases)
            self.base, self.reward = f"diffusers:{sd3}", f"clip:{PROMPT};contrast=a photo;model={clip}"
            self.extra, self.diversity = {"prompt": PROMPT, "lora_rank": 4}, "pairwise_distance"
        self.base_x = self.sample(self.load(self.base))
        self.base_figures = self.figures(self.base_x)
        if name == "sd3-tiny":
            self.floor = 0.5 * self.base_figures["pairwise_distance"]

    def load(self, base: str):
        from flowsteer.bases import load_base

        return load_base(base, prompt=self.extra.get("prompt"))

    def sample(self, run) -> torch.Tensor:
        steps = 10 if self.name == "sd3-tiny" else 25
        return run.sample(self.n, solver="heun", steps=steps, seed=7).x.float().cpu()

    def figures(self, x: torch.Tensor) -> dict:
        from flowsteer.metrics import class_histogram, entropy, frechet_distance, mean_pairwise_distance, wasserstein2
        from flowsteer.rewards import build_reward, score

        base = getattr(self, "base_x", x)
        if self.name == "digits":  # samples and base clipped alike to the data's range [-1, 1]
            flat = np.clip(x.reshape(x.shape[0], -1).numpy(), -1, 1)
            base_flat = np.clip(base.reshape(base.shape[0], -1).numpy(), -1, 1)
            pred = self.clf.predict(flat)
            return {"reward": float(np.isin(pred, [0, 2, 4, 6, 8]).mean()),
                    "class_entropy": entropy(class_histogram(pred, 10)) + 0.0,
                    "w2_to_base": wasserstein2(flat, base_flat),
                    # on the judging classifier's 10 logits, like flowsteer's own Frechet distance on digits
                    "fd_to_base": frechet_distance(self.clf.decision_function(flat),
                                                   self.clf.decision_function(base_flat))}
        reward = build_reward(self.reward)
        r = float(score(reward, x).mean())
        if self.name == "8gaussians":
            from flowsteer.rewards.modes import mode_shares

            return {"reward": r, "rewarded_modes_held": reward.held(x),
                    "mode_shares": [round(float(s), 3) for s in mode_shares(x)], "w2_to_base": wasserstein2(x, base)}
        return {"reward": r, "pairwise_distance": mean_pairwise_distance(x), "w2_to_base": wasserstein2(x, base)}


# --------------------------------------------------------------------------- one method's tuning sweep


def steps_for(fields: dict, calls: int, batch: int) -> int:
    from flowsteer.methods.configs import AlignConfig

    updates = fields.get("rollout_updates", AlignConfig.rollout_updates) if fields["method"] == "flow-grpo" else 1
    return max(1, calls // batch) * updates  # flow-grpo scores one batch per round of `updates` steps


def run_method(task: Task, name: str, budget: dict, out: Path) -> list[dict]:
    from flowsteer.config import align_train_defaults
    from flowsteer.errors import TrainingStopped
    from flowsteer.methods.configs import AlignConfig
    from flowsteer.methods.sweep import sweep_run_dir, write_sweep_summary

    fields, knob, values = METHODS[name]
    b = budget["batch"]
    steps = steps_for(fields, budget["calls"], b)
    train = dataclasses.replace(align_train_defaults(), steps=steps, batch_size=b, log_every=max(1, steps // 10))
    n_eval, eval_steps = budget["train_eval"]
    extra = {**task.extra, "eval_every": 0, "eval_samples": n_eval, "eval_steps": eval_steps, "group_size": min(8, b)}
    if fields["method"] not in ("flow-grpo", "nft"):
        extra.pop("group_size")
    if fields["method"] != "flow-grpo":  # the rollout default when the documented figures were measured
        extra["rollout_solver"] = "euler"
    if fields["method"] == "rwr":
        extra["rwr_samples"] = max(b, min(4096, budget["calls"]))
    rows, folders = [], []
    for value in values or (None,):
        setting = {knob: value} if knob else {}
        cfg = AlignConfig(base=task.base, reward=task.reward, train=train, **fields, **extra, **setting)
        assert not cfg.validate(), cfg.validate()
        where = sweep_run_dir(out / name, value, knob) if knob else out / name
        try:
            run = finished_or_new(cfg, where)
        except TrainingStopped as err:  # a setting that diverges is a result of the sweep, not a crash of the benchmark
            rows.append({"method": name, "knob": knob, "value": value, "run": str(where), "steps": steps,
                         "diverged": str(err).split(";")[0]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        folders.append(where)
        f = run.config["final"]
        row = {"method": name, "knob": knob, "value": value, "run": str(where), "steps": steps,
               **task.figures(task.sample(run)),
               **{k: f[k] for k in ("reward_calls", "model_evals", "train_seconds", "peak_memory_mb")},
               "seconds_per_step": round(f["train_seconds"] / steps, 4),
               "seconds_per_1000_reward_calls": round(1000 * f["train_seconds"] / max(f["reward_calls"], 1), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if knob and folders:
        write_sweep_summary(out / name, folders, knob=knob)
    return rows


def finished_or_new(cfg, where: Path):
    """The run in ``where``: reloaded when an earlier call of this benchmark finished it (its ``final_metrics.json``
    exists), else trained afresh - an unfinished folder of an interrupted call is this benchmark's own and is removed."""
    import shutil

    from flowsteer.methods.orw import align
    from flowsteer.runs import load_run

    if (where / "final_metrics.json").exists():
        print(f"reusing the finished run {where}", flush=True)
        return load_run(where)
    if where.exists():
        print(f"removing the unfinished run {where} of an interrupted call", flush=True)
        shutil.rmtree(where)
    return align(cfg, where, progress="quiet")


def choose(rows: list[dict], task: Task) -> dict:
    """The stated rule: highest reward among the settings whose diversity clears the floor, else the most diverse
    (settings that diverged are out)."""
    rows = [r for r in rows if "diverged" not in r]
    if not rows:
        return {"method": "?", "knob": None, "value": None, "diverged": "every setting diverged", "cleared_floor": False}
    ok = [r for r in rows if r[task.diversity] >= task.floor]
    best = max(ok, key=lambda r: r["reward"]) if ok else max(rows, key=lambda r: r[task.diversity])
    return {**best, "cleared_floor": bool(ok)}


def run_task(args: argparse.Namespace) -> None:
    budget = (QUICK if args.quick else FULL)[args.task]
    if args.reward_calls:
        budget = {**budget, "calls": args.reward_calls}
    out = Path(args.out) / (args.task + ("-quick" if args.quick else ""))
    start = time.perf_counter()
    task = Task(args.task, args, budget)
    print(f"device: {device_name()}; base {task.base}: {json.dumps(task.base_figures)}", flush=True)
    rows, chosen = [], []
    for name in args.methods.split(","):
        mine = run_method(task, name, budget, out)
        rows += mine
        chosen.append({**choose(mine, task), "method": name})
    skip = ("value", "steps", *(() if torch.cuda.is_available() else ("peak_memory_mb",)))  # CPU: the running RSS
    keys = [k for k, v in chosen[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip]
    print(f"\nchosen per method ({task.diversity} floor {task.floor:g}; * = none cleared it):\n"
          "| method | setting | " + " | ".join(keys) + " |\n|---|---|"
          + "---|" * len(keys))
    for r in chosen:
        setting = f"{r['knob']}={r['value']:g}" if r["knob"] else "-"
        print(f"| {r['method']}{'' if r['cleared_floor'] else ' *'} | {setting} | "
              + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "diverged")) for k in keys)
              + " |")
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", {
        "task": args.task, "quick": args.quick, "device": device_name(), "base": task.base, "reward": task.reward,
        "budget": budget, "rule": f"highest reward with {task.diversity} >= {task.floor:g}, else the most diverse",
        "base_figures": task.base_figures, "rows": rows, "chosen": chosen, "seconds": round(seconds, 1)})
    print(f"\n{out / 'summary.json'} ({seconds / 60:.1f} min)")


# --------------------------------------------------------------------------- cost at three model scales


def steady_seconds_per_step(run: Path) -> float:
    """Seconds per step after the first two (warm-up: lazy model loads, allocations; two keep Flow-GRPO's rounds of
    2 updates whole), from the Trainer's ``elapsed_s`` of each step in ``metrics.jsonl``."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, lines) if r.get("kind") == "train"}
    last = max(elapsed)
    return (elapsed[last] - elapsed[2]) / (last - 2)


def cost_table(args: argparse.Namespace) -> None:
    quick = args.quick
    out = Path(args.out) / ("cost-quick" if quick else "cost")
    bases = Path(args.out) / "bases"
    sd3, clip = sd3_files(bases)
    digits = args.base or str(pretrain_base(bases / "digits", "digits", 300 if quick else 4000))
    unet = str(pretrain_base(bases / ("unet-digits-quick" if quick else "unet-digits"), "digits", 2 if quick else 200,
                             model="unet"))
    scales = {  # scale -> (base, reward, batch, extra CLI options)
        "mlp (digits)": (digits, "even-digits", 64 if quick else 256, []),
        "unet (digits)": (unet, "even-digits", 16 if quick else 64, []),
        "sd3-tiny lora": (f"diffusers:{sd3}", f"clip:{PROMPT};contrast=a photo;model={clip}", 8 if quick else 16,
                          ["--prompt", PROMPT, "--lora-rank", "4"]),
    }
    steps = 6 if quick else 40  # even: Flow-GRPO's rounds of 2 updates stay whole
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = "1"
    rows = []
    print(f"device: {device_name()}")
    for scale, (base, reward, b, extra) in scales.items():
        for name in args.methods.split(","):
            fields = METHODS[name][0]
            opts = [f"--{k.replace('_', '-')}={v}" for k, v in fields.items()]
            if fields["method"] in ("flow-grpo", "nft"):
                opts.append(f"--group-size={min(8, b)}")
            if fields["method"] == "rwr":
                opts.append(f"--rwr-samples={4 * b}")
            if fields["method"] != "flow-grpo":
                opts.append("--rollout-solver=euler")  # the rollout default when its figures were measured
            n = steps_for(fields, steps * b, b)
            where = out / scale.split()[0] / name
            cmd = [sys.executable, "-m", "flowsteer", "align", "--base", base, "--reward", reward, *opts, *extra,
                   "--steps", str(n), "--batch-size", str(b), "--eval-every", "0", "--eval-samples", "2", "--quiet",
                   "--log-every", "1", "--out", str(where)]
            subprocess.run(cmd, check=True, env=env)
            f = json.loads((where / "final_metrics.json").read_text())
            rows.append({"scale": scale, "method": name, "batch": b, "steps": n, **{k: f[k] for k in (
                "reward_calls", "model_evals", "train_seconds", "peak_memory_mb", "peak_memory_source")},
                "s_per_step": steady_seconds_per_step(where), "s_per_1000_calls": 1000 * f["train_seconds"] / f["reward_calls"]})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| scale | method | s/step | s / 1000 reward calls | peak MiB | s/step vs ORW-CFM-W2 | s/1000 calls vs ORW | "
          "memory vs ORW |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["scale"] == r["scale"] and x["method"] == "orw-w2")
        r.update(time_ratio=r["s_per_step"] / ref["s_per_step"], call_ratio=r["s_per_1000_calls"] / ref["s_per_1000_calls"],
                 memory_ratio=r["peak_memory_mb"] / ref["peak_memory_mb"])
        print(f"| {r['scale']} | {r['method']} | {r['s_per_step']:.3g} | {r['s_per_1000_calls']:.3g} | "
              f"{r['peak_memory_mb']:.0f} | {r['time_ratio']:.2f} | {r['call_ratio']:.2f} | {r['memory_ratio']:.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", {"device": device_name(), "quick": quick, "rows": rows})
    print(f"\n{out / 'summary.json'}; peak memory: {rows[0]['peak_memory_source']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("digits", "8gaussians", "sd3-tiny", "cost"), default="digits")
    ap.add_argument("--base", default=None, help="digits: a pretrained digits run (default: pretrained into OUT/bases)")
    ap.add_argument("--out", default="runs/baselines")
    ap.add_argument("--reward-calls", type=int, default=None, help="override the task's budget")
    ap.add_argument("--methods", default="orw-w2,orw,rwr,raft,flow-grpo,nft,nft-stable", help="comma-separated names of METHODS "
                                                                                    "(orw-w2 first: the cost ratios)")
    ap.add_argument("--quick", action="store_true", help="smoke test: budgets shrunk about 30x")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.task == "cost":
        cost_table(args)
    else:
        run_task(args)


if __name__ == "__main__":
    main()
