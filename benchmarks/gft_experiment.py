"""GFT against SFT for deterministic (sigma = 0) and stochastic (sigma > 0) flows, and the paper's four claims (issue 16).

    python benchmarks/gft_experiment.py [--out runs/gft-exp] [--workers 2] [--sigma S]     # the experiment, <= 25 min
    python benchmarks/gft_experiment.py --tune-sigma 0.1,0.3,1.0 [--out runs/gft-tune]     # how S was chosen
    python benchmarks/gft_experiment.py --mnist ...                                      # adds MNIST 0-4 -> 5-9

Grid: 2 shifts (8 Gaussians -> moons, 1500 steps; digits 0-4 -> 5-9, 1000 steps) x sigma in {0, S} x
{full, 64 targets} x {sft, gft} x {independent, ot} x 3 seeds = 96 `adapt()` runs with the adapt defaults
otherwise (lr 1e-3, batch 256; GFT: geometric schedule from tau 10 in 4 stages, the last 25 % at tau = 0).
Bases are `pretrain()` with the CLI defaults and `--sigma`.  Plus the learning-rate check: digits, full
targets, seed 0, every (sigma, method, coupling) cell at lr x3 and x10 (16 runs).

Each run is evaluated on 500 held-out target samples at 50 solver steps (Euler for sigma = 0, Euler-Maruyama
otherwise; the same noise every time) every 10 % of its steps and every 5 % in the final tau = 0 phase, and
at the end on 1000 at NFE 1, 2, 4, 8, 50 (the quality figures).  Speed and stability read the 500-sample series.
The figures and their definitions (docs/results.md, "GFT on stochastic flows"):

* quality: FD (digit-classifier features on digits, coordinates on 2-D) and W2 to held-out targets per NFE;
* stability: the seed-to-seed std of FD@50 and W2@50 at each evaluation inside the final tau = 0 phase
  (after 75 % of the steps: 5 evaluations), averaged over them; the within-run std over the same
  evaluations; and the learning-rate check: runs that diverge or end > 20 % worse in FD@50 than at lr x1;
* training speed: the first evaluation from which FD@50 stays within 10 % of the run's final FD@50, as a
  share of the run's steps;
* diversity (64 targets): `memorised_share` at NFE 50 (held-out target samples score the floor, printed),
  and for digits the class entropy of the digit classifier's labels (uniform over 5-9: ln 5 = 1.609).

Writes OUT/results.json and prints the tables that docs/results.md quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

SHIFTS = {"8g->moons": ("8gaussians", "moons", 1500), "digits0-4->5-9": ("digits:0-4", "digits:5-9", 1000)}
MNIST_SHIFT = {"mnist0-4->5-9": ("mnist:0-4", "mnist:5-9", 1000)}
NFES = (1, 2, 4, 8, 50)
EVAL_SHARE = 20  # evaluations per run (every 5 % of the steps)
FINAL_PHASE = 0.75  # the adapt default final_fraction 0.25: tau = 0 after 75 % of the steps
LR_MULTIPLIERS = (3, 10)


def adapt_targets(base, base_dir: str, target: str, n_target: int | None):
    """The training targets and held-out samples that ``adapt`` itself uses (data units)."""
    from flowsteer.config import adapt_train_defaults
    from flowsteer.methods import gft

    config = gft.AdaptConfig(base=base_dir, target=target, n_target=n_target)
    return gft.target_samples(config, base, adapt_train_defaults().batch_size)


class Evaluator:
    """FD@50 and W2@50 on 500 samples every 10 % of the steps and every 5 % in the final tau = 0 phase (the history
    that speed and stability read); at the last step also every NFE, paths and diversity on 1000 samples."""

    def __init__(self, base_dir: str, target: str, n_target: int | None, steps: int) -> None:
        from flowsteer.evaluators import AdaptEvaluator
        from flowsteer.runs import load_run

        base = load_run(base_dir)
        targets, heldout = adapt_targets(base, base_dir, target, n_target)
        common = dict(decode=base.decode, shape=base.shape, sigma=base.sigma)
        self.during = AdaptEvaluator(heldout, nfes=(50,), n=500, paths=False, **common)
        self.final = AdaptEvaluator(heldout, nfes=NFES, n=1000, targets=targets if n_target else None, **common)
        self.steps, self.every = steps, steps // EVAL_SHARE
        self.history: list[dict] = []
        self.final_figures: dict = {}

    def __call__(self, trainer):
        step = trainer.step
        if step == 0 or (step <= FINAL_PHASE * self.steps and (step // self.every) % 2):
            return {}
        figures = self.during(trainer)
        self.history.append({"step": step, **{k: v for k, v in figures.items() if isinstance(v, float)}})
        if step >= self.steps:
            figures = self.final(trainer)
            self.final_figures = {k: v for k, v in figures.items() if isinstance(v, float)}
        return figures


def one_run(job: dict) -> dict:
    """One adapt() run in memory; returns its final figures and its evaluation history."""
    import torch

    torch.set_num_threads(1)
    from flowsteer.config import adapt_train_defaults
    from flowsteer.errors import FlowsteerError
    from flowsteer.methods import gft

    train = adapt_train_defaults()
    train.steps, train.seed, train.lr = job["steps"], job["seed"], train.lr * job["lr_mult"]
    evaluate = Evaluator(job["base"], job["target"], job["n_target"], job["steps"])
    start = time.perf_counter()
    row = {k: v for k, v in job.items() if k != "base"}
    try:
        gft.adapt(gft.AdaptConfig(base=job["base"], target=job["target"], method=job["method"],
                                  coupling=job["coupling"], n_target=job["n_target"], train=train,
                                  eval_every=job["steps"] // EVAL_SHARE, eval_nfes=NFES),
                  None, progress="quiet", evaluate=evaluate)
        row["diverged"] = False
    except (FlowsteerError, FloatingPointError) as err:  # a stopped (diverged) run is a result, not a crash
        row.update(diverged=True, error=str(err).splitlines()[0])
    row["seconds"] = time.perf_counter() - start
    row["history"] = evaluate.history
    row["n_target"] = job["n_target"] or "full"
    row["history"] = [{k: (v if math.isfinite(v) else None) for k, v in h.items()} for h in row["history"]]
    if not row["diverged"]:
        row["diverged"] = not evaluate.final_figures or not all(math.isfinite(v) for v in evaluate.final_figures.values())
    if not row["diverged"]:  # figures are flat in the row too, as issue 4's rows were (benchmarks/reproduce.py reads them)
        row["final"] = evaluate.final_figures
        last3 = [h["w2_to_target_nfe50"] for h in row["history"] if h["step"] > 0][-3:]
        row.update(row["final"], w2_to_target_nfe50_last3_std=float(np.std(last3, ddof=1)))
    return row


def speed(history: list[dict], steps: int, key: str = "fd_to_target_nfe50") -> float:
    """First evaluation step (share of ``steps``) from which ``key`` stays within 10 % of its final value."""
    pts = [(h["step"], h[key]) for h in history if h["step"] > 0 and h.get(key) is not None]
    final = pts[-1][1]
    first = pts[-1][0]
    for step, value in reversed(pts):
        if abs(value - final) > 0.1 * abs(final):
            break
        first = step
    return first / steps


def final_phase(history: list[dict], steps: int, key: str) -> list[float]:
    return [h[key] for h in history if h["step"] > FINAL_PHASE * steps and h.get(key) is not None]


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


def pretrain_job(args: tuple[str, str, float]) -> str:
    import torch

    torch.set_num_threads(1)
    from flowsteer import PretrainConfig, pretrain

    source, folder, sigma = args
    if not (Path(folder) / "model.safetensors").exists():
        pretrain(PretrainConfig(data=source, sigma=sigma), folder, progress="quiet")
    return folder


def base_folder(out: Path, source: str, sigma: float) -> str:
    return str(out / f"base-{source.replace(':', '_')}-sigma{sigma:g}")


def heldout_floor(base_dir: str, target: str, n_target: int) -> float:
    """``memorised_share`` of 1000 held-out target samples against the 64 training targets (the no-copy level)."""
    from flowsteer.metrics import memorised_share
    from flowsteer.runs import load_run

    targets, heldout = adapt_targets(load_run(base_dir), base_dir, target, n_target)
    return memorised_share(heldout[:1000], targets)


def summary_of(rows: list[dict], shifts: dict) -> dict:
    """:func:`summarise`, plus each cell's seed-0 FD@50 (the learning-rate table compares seed 0 of each cell)."""
    summary = summarise(rows, shifts)
    for r in rows:
        if r["seed"] == 0:
            key = "|".join(map(str, (r["shift"], r["sigma"], r["n_target"], r["method"], r["coupling"], r["lr_mult"])))
            summary.setdefault(key, {})["fd_seed0"] = None if r["diverged"] else r["final"]["fd_to_target_nfe50"]
    return summary


def summarise(rows: list[dict], shifts: dict) -> dict:
    """Mean and std over seeds of every figure, per (shift, sigma, n, method, coupling, lr_mult) cell."""
    cells: dict = {}
    for r in rows:
        key = (r["shift"], r["sigma"], r["n_target"], r["method"], r["coupling"], r["lr_mult"])
        cells.setdefault(key, []).append(r)
    out = {}
    for key, group in cells.items():
        ok = [r for r in group if not r["diverged"]]
        steps = group[0]["steps"]
        cell = {"runs": len(group), "diverged": len(group) - len(ok)}
        if ok:
            for name in ok[0]["final"]:
                if name == "step":
                    continue
                vals = [r["final"][name] for r in ok if name in r["final"]]
                cell[name] = (float(np.mean(vals)), sample_std(vals))
            speeds = [speed(r["history"], steps) for r in ok]
            cell["speed"] = (float(np.mean(speeds)), sample_std(speeds))
            for metric in ("fd_to_target_nfe50", "w2_to_target_nfe50"):
                phases = [final_phase(r["history"], steps, metric) for r in ok]
                if len({len(p) for p in phases}) != 1 or not phases[0]:
                    continue  # an evaluation is missing (non-finite): no stability figure rather than a wrong one
                phases = np.array(phases)  # [seeds, evaluations]
                cell[f"{metric}_seed_std"] = float(phases.std(axis=0, ddof=1).mean()) if len(ok) > 1 else None
                cell[f"{metric}_within_std"] = float(phases.std(axis=1, ddof=1).mean())
        out["|".join(map(str, key))] = cell
    return out


def sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof = 1; 0 for a single value): what every "± std" here means."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def verdict(a: tuple[float, float], b: tuple[float, float], lower_is_better: bool = True) -> str:
    """GFT (a) against SFT (b): better / worse when the means differ by more than the larger std, else tie."""
    margin = max(a[1], b[1])
    diff = (b[0] - a[0]) if lower_is_better else (a[0] - b[0])
    return "GFT better" if diff > margin else "SFT better" if -diff > margin else "tie"


def fmt(cell: dict, name: str, digits: int | None = None) -> str:
    """``mean ± std``; by default 3 decimals below 1 (the 2-D figures), else 2."""
    v = cell.get(name)
    if v is None:
        return "—"
    d = digits if digits is not None else (3 if abs(v[0]) < 1 else 2)
    return f"{v[0]:.{d}f} ± {v[1]:.{d}f}"


def print_tables(summary: dict, shifts: dict, sigmas: list[float], floors: dict) -> None:
    def cell(shift, sigma, n, method, coupling, lr=1):
        return summary.get(f"{shift}|{sigma}|{n}|{method}|{coupling}|{lr}", {})

    print("\n### Quality: FD to held-out targets by NFE (mean ± std over 3 seeds)\n")
    print("| shift | σ | targets | method | coupling | " + " | ".join(f"FD@{k}" for k in NFES) + " | W2@4 | W2@50 |")
    print("|---" * (7 + len(NFES)) + "|")
    for shift, sigma, n, m, c in itertools.product(shifts, sigmas, ("full", 64), ("sft", "gft"), ("independent", "ot")):
        x = cell(shift, sigma, n, m, c)
        print(f"| {shift} | {sigma:g} | {n} | {m} | {c} | " + " | ".join(fmt(x, f"fd_to_target_nfe{k}") for k in NFES)
              + f" | {fmt(x, 'w2_to_target_nfe4')} | {fmt(x, 'w2_to_target_nfe50')} |")
    print("\n### GFT against SFT at the same coupling\n")
    print("| shift | σ | targets | coupling | FD@4 gft / sft | FD@50 gft / sft | final quality (FD@50) | "
          "seed std FD@50 gft / sft | seed std W2@50 gft / sft | within-run std FD@50 gft / sft | speed gft / sft |")
    print("|---" * 11 + "|")
    for shift, sigma, n, c in itertools.product(shifts, sigmas, ("full", 64), ("independent", "ot")):
        g, s = cell(shift, sigma, n, "gft", c), cell(shift, sigma, n, "sft", c)
        if not g or not s or "fd_to_target_nfe50" not in g or "fd_to_target_nfe50" not in s:
            continue

        def pair(name, d=3):
            gv, sv = g.get(name), s.get(name)
            return f"{gv:.{d}f} / {sv:.{d}f}" if gv is not None and sv is not None else "—"
        print(f"| {shift} | {sigma:g} | {n} | {c} | {fmt(g, 'fd_to_target_nfe4')} / {fmt(s, 'fd_to_target_nfe4')} | "
              f"{fmt(g, 'fd_to_target_nfe50')} / {fmt(s, 'fd_to_target_nfe50')} | "
              f"{verdict(g['fd_to_target_nfe50'], s['fd_to_target_nfe50'])} | {pair('fd_to_target_nfe50_seed_std')} | "
              f"{pair('w2_to_target_nfe50_seed_std')} | {pair('fd_to_target_nfe50_within_std')} | "
              f"{fmt(g, 'speed', 2)} / {fmt(s, 'speed', 2)} |")
    print("\n### Few-step acceptance: GFT + OT FD@4 against SFT + independent FD@4\n")
    for shift, sigma, n in itertools.product(shifts, sigmas, ("full", 64)):
        g, s = cell(shift, sigma, n, "gft", "ot"), cell(shift, sigma, n, "sft", "independent")
        if "fd_to_target_nfe4" in g and "fd_to_target_nfe4" in s:
            print(f"- {shift}, σ {sigma:g}, {n} targets: {g['fd_to_target_nfe4'][0]:.3f} / {s['fd_to_target_nfe4'][0]:.3f}"
                  f" = {g['fd_to_target_nfe4'][0] / s['fd_to_target_nfe4'][0]:.3f}")
    print("\n### Diversity with 64 targets (NFE 50)\n")
    print("| shift | σ | method | coupling | memorised share | class entropy (nats) |")
    print("|---" * 6 + "|")
    for shift, sigma, m, c in itertools.product(shifts, sigmas, ("sft", "gft"), ("independent", "ot")):
        x = cell(shift, sigma, 64, m, c)
        print(f"| {shift} | {sigma:g} | {m} | {c} | {fmt(x, 'memorised_share_nfe50')} | {fmt(x, 'class_entropy_nfe50')} |")
    print("\nheld-out target samples' memorised share (the no-copy level): "
          + ", ".join(f"{k} {v:.3f}" for k, v in floors.items()))
    print("\n### Learning-rate sensitivity (digits, full targets, seed 0): FD@50 at lr x1 / x3 / x10\n")
    lr_shift = [s for s in shifts if s.startswith("digits")][0]
    print("| σ | method | coupling | x1 | x3 | x10 | diverged or > 20 % worse |")
    print("|---" * 7 + "|")
    for sigma, m, c in itertools.product(sigmas, ("sft", "gft"), ("independent", "ot")):
        figs = [summary.get(f"{lr_shift}|{sigma}|full|{m}|{c}|{lr}", {}) for lr in (1, *LR_MULTIPLIERS)]
        base = figs[0].get("fd_seed0")
        bad, vals = 0, []
        for f in figs:
            v = f.get("fd_seed0")
            vals.append("diverged" if v is None else f"{v:.2f}")
        for f in figs[1:]:
            v = f.get("fd_seed0")
            bad += v is None or (base is not None and v > 1.2 * base)
        print(f"| {sigma:g} | {m} | {c} | " + " | ".join(vals) + f" | {bad} of {len(LR_MULTIPLIERS)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gft-exp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=0.1, help="the sigma > 0 of the grid (tuned: see --tune-sigma)")
    ap.add_argument("--tune-sigma", default=None, metavar="S[,S...]",
                    help="instead of the grid: GFT + OT on digits, full targets, seeds 0-1, at each sigma")
    ap.add_argument("--mnist", action="store_true", help="add MNIST 0-4 -> 5-9 (needs `flowsteer data mnist`)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tables-from", default=None, metavar="RESULTS_JSON",
                    help="print the tables of an earlier run's results.json and stop")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a tenth of the steps, one seed (figures mean nothing)")
    args = ap.parse_args()
    if args.tables_from:
        saved = json.loads(Path(args.tables_from).read_text())
        shifts = {k: v for k, v in {**SHIFTS, **MNIST_SHIFT}.items() if any(r["shift"] == k for r in saved["rows"])}
        print_tables(summary_of(saved["rows"], shifts), shifts, saved["sigmas"], saved["memorised_floor"])
        return
    if args.quick:
        SHIFTS.update({k: (a, b, steps // 10) for k, (a, b, steps) in SHIFTS.items()})
        args.seeds = 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shifts = {**SHIFTS, **(MNIST_SHIFT if args.mnist else {})}
    if args.tune_sigma:
        sigmas = [float(s) for s in args.tune_sigma.split(",")]
        shifts = {"digits0-4->5-9": SHIFTS["digits0-4->5-9"]}
        seeds, lr_mults = range(2), ()
        grid = [(s, "full", "gft", "ot") for s in sigmas]
    else:
        sigmas, seeds, lr_mults = [0.0, args.sigma], range(args.seeds), LR_MULTIPLIERS
        grid = list(itertools.product(sigmas, ("full", 64), ("sft", "gft"), ("independent", "ot")))
    bases = [(src, base_folder(out, src, sigma), sigma) for (src, _, _), sigma in itertools.product(shifts.values(), sigmas)]
    with Pool(args.workers) as pool:
        pool.map(pretrain_job, bases, chunksize=1)
        print(f"{len(bases)} bases ready after {time.perf_counter() - t0:.0f} s", flush=True)
        jobs = [dict(shift=shift, base=base_folder(out, src, sigma), target=tgt, steps=steps, sigma=sigma,
                     n_target=None if n == "full" else n, method=m, coupling=c, seed=seed, lr_mult=1)
                for (shift, (src, tgt, steps)), (sigma, n, m, c), seed in itertools.product(shifts.items(), grid, seeds)]
        lr_shift = "digits0-4->5-9"
        src, tgt, steps = SHIFTS[lr_shift]
        jobs += [dict(shift=lr_shift, base=base_folder(out, src, sigma), target=tgt, steps=steps, sigma=sigma,
                      n_target=None, method=m, coupling=c, seed=0, lr_mult=lr)
                 for sigma, m, c, lr in itertools.product(sigmas, ("sft", "gft"), ("independent", "ot"), lr_mults)]
        jobs.sort(key=lambda j: -j["steps"] * (2 if j["method"] == "gft" or j["coupling"] == "ot" else 1))  # long first
        rows = []
        partial = out / "rows.jsonl"  # each run as it finishes, so a crash at the end loses nothing
        partial.write_text("")
        for row in pool.imap_unordered(one_run, jobs):
            rows.append(row)
            with partial.open("a") as f:
                f.write(json.dumps(row, allow_nan=False, default=str) + "\n")
            fd = row["final"].get("fd_to_target_nfe4", float("nan")) if not row["diverged"] else float("nan")
            print(f"[{len(rows)}/{len(jobs)}] {row['shift']} σ {row['sigma']:g} n={row['n_target']} "
                  f"{row['method']}/{row['coupling']} seed {row['seed']} lr x{row['lr_mult']}: FD@4 {fd:.2f}"
                  f"{' DIVERGED' if row['diverged'] else ''} ({row['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    summary = summary_of(rows, shifts)
    floors = {} if args.tune_sigma else {s: heldout_floor(base_folder(out, shifts[s][0], 0.0), shifts[s][1], 64)
                                         for s in shifts}
    bounds = {} if args.tune_sigma else {s: ideal_path_lengths(base_folder(out, shifts[s][0], 0.0), shifts[s][1])
                                         for s in SHIFTS}
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary, "total_seconds": total,
                                                  "sigmas": sigmas, "memorised_floor": floors, "bounds": bounds},
                                                 indent=1, allow_nan=False, default=str))
    print(f"\ntotal {total / 60:.1f} min, bases included ({len(rows)} runs); the path bounds and floors took "
          f"{time.perf_counter() - t0 - total:.0f} s more")
    for shift, b in bounds.items():
        print(f"{shift}: W1 bound {b['w1_bound']:.3f}, exact independent flow {b['independent_flow']:.3f}, "
              f"best possible path ratio {b['best_ratio']:.3f}; W2 floor {b['w2_floor_train_vs_heldout']:.3f}")
    if args.tune_sigma:
        print("\n| σ | FD@4 | FD@50 | W2@50 |\n|---|---|---|---|")
        for s in sigmas:
            x = summary[f"digits0-4->5-9|{s}|full|gft|ot|1"]
            print(f"| {s:g} | {fmt(x, 'fd_to_target_nfe4', 2)} | {fmt(x, 'fd_to_target_nfe50', 2)} | "
                  f"{fmt(x, 'w2_to_target_nfe50')} |")
        best = min(sigmas, key=lambda s: summary[f"digits0-4->5-9|{s}|full|gft|ot|1"]["fd_to_target_nfe50"][0])
        print(f"\nchosen sigma (lowest mean FD@50 of GFT + OT): {best:g}")
        return
    print_tables(summary, shifts, sigmas, floors)


if __name__ == "__main__":
    main()
