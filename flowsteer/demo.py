"""``flowsteer demo``: the main job, with no arguments needed.

On sklearn's 8x8 digits (bundled with scikit-learn, nothing is downloaded) it

1. pretrains two flow models: on all digits, and on digits 0-4;
2. aligns the first toward even digits with ORW-CFM-W2 at alpha = 0 (plain ORW-CFM: mode collapse) and
   at the default alpha (the cure), side by side, as a two-point alpha sweep (``align-even/``);
3. adapts the second to digits 5-9 with GFT and with SFT (standard fine-tuning, same budget);
4. evaluates every run (``evaluation.json`` in each folder, as ``flowsteer evaluate`` writes it);
5. writes the HTML report ``OUT/report/index.html``.

Independent jobs run two at a time in separate processes (one torch thread each) where the machine
has two or more cores.  A finished run folder with the requested number of steps is reused, so a
second ``flowsteer demo`` only redoes what is missing.  ``--fast`` shrinks every budget for a quick look
(and for the tests); its figures are not meaningful.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ALIGN_DEFAULT_ALPHA, EvaluationConfig, TrainConfig, adapt_train_defaults, align_train_defaults
from .devices import resolve_device
from .evaluation import evaluate, write_evaluation
from .io import atomic_write_json
from .methods.configs import AdaptConfig, AlignConfig, PretrainConfig
from .methods.gft import adapt
from .methods.orw import align
from .methods.pretrain import pretrain
from .methods.sweep import sweep_run_dir, write_sweep_summary
from .errors import ConfigError
from .ownership import REPORT, RUN_KINDS, claim_folder, folder_kind
from .report import write_report
from .runs import CONFIG_FILE, EVALUATION_FILE, SUMMARY_FILE, WEIGHTS_FILE


@dataclass(frozen=True)
class DemoBudget:
    """Steps of each stage (``full`` for ``flowsteer demo``, ``fast`` for ``--fast``)."""

    pretrain_steps: int
    align_steps: int
    align_eval_every: int
    adapt_steps: int
    adapt_eval_every: int
    eval_samples: int
    eval_nfes: tuple[int, ...]

    @classmethod
    def full(cls) -> "DemoBudget":
        return cls(pretrain_steps=3000, align_steps=1500, align_eval_every=300, adapt_steps=1000,
                   adapt_eval_every=250, eval_samples=1000, eval_nfes=(1, 2, 4, 8, 50))

    @classmethod
    def fast(cls) -> "DemoBudget":
        return cls(pretrain_steps=300, align_steps=60, align_eval_every=30, adapt_steps=60, adapt_eval_every=30,
                   eval_samples=200, eval_nfes=(1, 4, 20))


FAST_WARNING = ("its runs are far too short to show the collapse at alpha = 0 or its cure, or GFT against SFT; the "
                "figures and pictures are not meaningful. Run flowsteer demo without --fast (about 5 min on 2 cores) "
                "to see the effect.")

# Share of the full demo's time spent in each stage (measured: 2 workers on a 2-core CPU, see docs/results.md);
# the ETA scales the time spent so far by these shares.
STAGE_SHARE = (0.25, 0.50, 0.14, 0.06, 0.05)


class _Clock:
    """ETAs from the time spent so far and :data:`STAGE_SHARE`: after a fraction ``f`` of the expected work,
    about ``elapsed * (1 - f) / f`` is left."""

    def __init__(self, t0: float) -> None:
        self.t0, self.progress = t0, 0.0

    def done(self, stage: int, within: float = 1.0) -> None:
        self.progress = max(self.progress, sum(STAGE_SHARE[:stage]) + STAGE_SHARE[stage] * within)

    def _left(self) -> float | None:
        elapsed = time.perf_counter() - self.t0
        return elapsed * (1 - self.progress) / self.progress if self.progress > 0.05 and elapsed > 1 else None

    def eta_text(self, stage: int, fast: bool) -> str:
        left = self._left()
        return "" if left is None or fast else f"; about {_minutes(left)} left in all"

    def left_text(self, fast: bool) -> str:
        left = self._left()
        return "" if left is None or fast else f"; about {_minutes(left)} left in all"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _finished(run_dir: Path, steps: int) -> bool:
    """A run folder that completed ``steps`` steps (and so can be reused)."""
    try:
        cfg = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    done = (run_dir / WEIGHTS_FILE).is_file() and cfg.get("steps_done") == steps
    return done and (cfg.get("method") == "pretrain" or "final" in cfg)


def _job(out: str, config: Any) -> tuple[str, float]:
    """Run one stage in a worker process (one torch thread); returns (out, seconds)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    if isinstance(config, EvaluationConfig):
        write_evaluation(evaluate(config), Path(out) / EVALUATION_FILE)
    else:
        kind, train = TRAINERS[type(config)]
        with claim_folder(out, kind):  # recorded as that command's run, so the CLI can resume it
            train(config, Path(out), progress="quiet")
    return out, time.perf_counter() - start


TRAINERS: dict[type, tuple[str, Callable[..., Any]]] = {
    PretrainConfig: ("pretrain", pretrain), AlignConfig: ("align", align), AdaptConfig: ("adapt", adapt)}
RUN_NAMES = ("pretrain-digits", "pretrain-digits0-4", "adapt-gft", "adapt-sft")
# everything a demo folder holds: a folder of these names alone is a demo's (from before its owner record)
DEMO_ENTRIES = frozenset({*RUN_NAMES, "align-even", "report", SUMMARY_FILE})


def run_demo(out: Path, *, fast: bool = False, progress: str = "auto", say: Callable[[str], None] = print,
             workers: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the summary also written to ``out/summary.json``.

    ``device``: where every job computes (``auto``: CUDA when available).  On a GPU the jobs run one at a time.
    """
    resolved = resolve_device(device)
    if resolved.type != "cpu":
        workers = 1  # one process owns the GPU; the CPU worker pool is for 2-core machines
    budget = DemoBudget.fast() if fast else DemoBudget.full()
    if fast:
        say(f"flowsteer demo --fast: {FAST_WARNING}")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sweep = out / "align-even"
    paths = {name: out / name for name in RUN_NAMES}
    paths["align-alpha0"] = sweep_run_dir(sweep, 0.0)
    paths["align-default"] = sweep_run_dir(sweep, ALIGN_DEFAULT_ALPHA)

    clock = _Clock(t0)

    def stage(index: int, title: str, jobs: list[tuple[Path, Any]]) -> None:
        todo = []
        for run_dir, config in jobs:
            steps = config.train.steps if hasattr(config, "train") else None
            if steps is not None and _finished(run_dir, steps):
                say(f"  reusing {run_dir} (finished)")
                continue
            if steps is not None and run_dir.exists():
                if folder_kind(run_dir) not in RUN_KINDS:
                    raise ConfigError(f"{str(run_dir)!r} is not a flowsteer run, so the demo will not replace it; "
                                      "choose a new or empty folder for --out")
                shutil.rmtree(run_dir)  # an unfinished or differently sized run of the demo: start it again
            todo.append((str(run_dir), config))
        if not todo:
            clock.done(index)
            return
        say(f"[{index + 1}/{len(STAGE_SHARE)}] {title} ({len(todo)} job(s), {min(workers, len(todo))} at a time"
            + clock.eta_text(index, fast) + ")")
        if workers == 1 or len(todo) == 1:
            finished = (_job(*job) for job in todo)
        else:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            finished = (f.result() for f in as_completed([pool.submit(_job, *job) for job in todo]))
        try:
            for k, (run_dir, seconds) in enumerate(finished, 1):
                clock.done(index, k / len(todo))
                say(f"  {run_dir}: {seconds:.0f} s ({k} of {len(todo)} in this stage{clock.left_text(fast)})")
        finally:
            if workers != 1 and len(todo) != 1:
                pool.shutdown()
        clock.done(index)

    b = budget

    def steps(train: TrainConfig, n: int) -> TrainConfig:
        return dataclasses.replace(train, steps=n, device=str(resolved))
    stage(0, "pretraining on digits and on digits 0-4", [
        (paths[f"pretrain-{name}"], PretrainConfig(data=data, train=steps(TrainConfig(), b.pretrain_steps)))
        for name, data in (("digits", "digits"), ("digits0-4", "digits:0-4"))
    ])
    stage(1, f"aligning toward even digits: alpha = 0 and the default alpha = {ALIGN_DEFAULT_ALPHA:g}", [
        (paths[name], AlignConfig(base=str(paths["pretrain-digits"]), reward="even-digits", alpha=alpha,
                                  eval_every=b.align_eval_every, train=steps(align_train_defaults(), b.align_steps)))
        for name, alpha in (("align-alpha0", 0.0), ("align-default", ALIGN_DEFAULT_ALPHA))
    ])
    stage(2, "adapting digits 0-4 to digits 5-9 with GFT and SFT", [
        (paths[f"adapt-{m}"], AdaptConfig(base=str(paths["pretrain-digits0-4"]), target="digits:5-9", method=m,
                                          coupling="ot", eval_every=b.adapt_eval_every,
                                          train=steps(adapt_train_defaults(), b.adapt_steps)))
        for m in ("gft", "sft")
    ])

    def evaluation_of(name: str, **against: str) -> tuple[Path, EvaluationConfig]:
        return paths[name], EvaluationConfig(model=str(paths[name]), n=b.eval_samples, nfes=b.eval_nfes,
                                             device=str(resolved), **against)
    stage(3, "evaluating every run", [
        evaluation_of("pretrain-digits", reward="even-digits", target="digits"),
        evaluation_of("pretrain-digits0-4", target="digits:5-9"),
        *[evaluation_of(k, reward="even-digits", reference=str(paths["pretrain-digits"]))
          for k in ("align-alpha0", "align-default")],
        *[evaluation_of(k, target="digits:5-9", reference=str(paths["pretrain-digits0-4"]))
          for k in ("adapt-gft", "adapt-sft")],
    ])
    say(f"[5/5] writing the report{clock.eta_text(4, fast)}")
    write_sweep_summary(sweep, [paths["align-alpha0"], paths["align-default"]])
    with claim_folder(out / "report", REPORT):
        index = write_report([paths["pretrain-digits"], sweep, paths["pretrain-digits0-4"], paths["adapt-gft"],
                              paths["adapt-sft"]], out / "report", title="flowsteer demo: 8x8 digits",
                             note=FAST_WARNING if fast else None)

    def evaluation(name: str) -> dict[str, Any]:
        return json.loads((paths[name] / EVALUATION_FILE).read_text(encoding="utf-8"))

    summary: dict[str, Any] = {"fast": fast, "seconds": round(time.perf_counter() - t0, 1), "report": str(index)}
    for name in ("pretrain-digits", "align-alpha0", "align-default"):
        e = evaluation(name)
        m = e["metrics"]
        summary[name] = {"p_even": m["reward_mean"], "class_entropy": m["class_entropy"],
                         "top_class_share": m["top_class_share"]}
    for name in ("pretrain-digits0-4", "adapt-gft", "adapt-sft"):
        e = evaluation(name)
        summary[name] = {"w2_to_digits_5_9": e["metrics"]["w2_to_target"],
                         "frechet_to_digits_5_9": e["metrics"]["fd_to_target"],
                         "w2_at_4_nfe": next((r["w2_to_target"] for r in e["per_nfe"] if r["nfe"] == 4), None)}
    atomic_write_json(out / SUMMARY_FILE, summary)
    a0, ad = summary["align-alpha0"], summary["align-default"]
    say(f"alpha = 0:        P(even) {a0['p_even']:.3f}, class entropy {a0['class_entropy']:.3f} nats "
        f"(the top class is {100 * a0['top_class_share']:.0f} % of samples)")
    say(f"alpha = {ALIGN_DEFAULT_ALPHA:g}:     P(even) {ad['p_even']:.3f}, class entropy {ad['class_entropy']:.3f} nats "
        f"(ln 5 = 1.609 is uniform over the even digits)")
    for name in ("pretrain-digits0-4", "adapt-gft", "adapt-sft"):
        s = summary[name]
        say(f"{name:17s} Frechet distance to digits 5-9 {s['frechet_to_digits_5_9']:.2f}, W2 {s['w2_to_digits_5_9']:.3f}")
    say(f"done in {summary['seconds'] / 60:.1f} min. Open the report: {index.resolve()}")
    return summary
