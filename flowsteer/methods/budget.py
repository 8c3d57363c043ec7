"""Every align method's budget, counted one way (issue 20): reward calls, model evaluations, wall time, memory.

* ``reward_calls``: samples scored by the reward (a call on a batch of ``n`` counts ``n``);
* ``model_evals``: per-sample forward passes of a velocity network - the trained one, the sampling policy
  ``theta_old`` or the frozen reference - in rollouts (``n`` samples by a solver of ``K`` NFE count ``n K``)
  and in training (each call on a batch of ``n`` counts ``n``).  The evaluation samples of ``--eval-every``
  are not part of the budget and are not counted;
* ``train_seconds``: wall time of training - from the objective's construction (so RWR's fixed sample set,
  scored there, counts) to the end of the Trainer, summed over resumes - less the time spent in evaluations
  (:meth:`Budget.evaluating` times them);
* ``peak_memory_mb``: on CUDA ``torch.cuda.max_memory_allocated`` of the run's device (its peak is reset when
  training starts); elsewhere the process's peak resident set size (``resource.getrusage``'s ``ru_maxrss``),
  a process-lifetime figure that includes whatever the process did before.  ``peak_memory_source`` says which.

The counts are plain Python integers incremented from known shapes, so counting reads nothing from the
device and adds no synchronisation to a step.  Work spent in a step that a stop signal cut short is counted
(it was spent); the counts are part of the objective's checkpointed state, so a resumed run continues them.
Under several processes each rank counts its own share and :func:`budget_figures` sums them.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import torch

BUDGET_KEYS = ("reward_calls", "model_evals", "train_seconds", "peak_memory_mb", "peak_memory_source")


class Budget:
    """Counters of one run's spending (see the module doc)."""

    def __init__(self) -> None:
        self.reward_calls = 0
        self.model_evals = 0
        self.seconds_before = 0.0  # training time of the run's earlier sessions (a resumed run)
        self.eval_seconds = 0.0  # this session's time in evaluations, left out of the training time
        self._started: float | None = None

    def scored(self, n: int) -> None:
        """``n`` samples went through the reward."""
        self.reward_calls += int(n)

    def forward(self, n: int, times: int = 1) -> None:
        """``times`` forward passes of a velocity network on a batch of ``n`` samples."""
        self.model_evals += int(n) * int(times)

    def start(self, device: torch.device) -> None:
        """Training starts now: the clock runs, and on CUDA the device's peak-memory counter is reset."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._started = time.perf_counter()

    def seconds(self) -> float:
        running = time.perf_counter() - self._started - self.eval_seconds if self._started is not None else 0.0
        return self.seconds_before + running

    def evaluating(self, evaluate: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
        """``evaluate`` timed (its time is not training time) and with the counts so far added to its record."""
        def timed(trainer: Any) -> dict[str, Any]:
            start = time.perf_counter()
            try:
                return {**evaluate(trainer), **self.counts()}
            finally:
                self.eval_seconds += time.perf_counter() - start
        return timed

    def counts(self) -> dict[str, int]:
        return {"reward_calls": self.reward_calls, "model_evals": self.model_evals}

    def state_dict(self) -> dict[str, Any]:
        return {**self.counts(), "seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:  # a checkpoint written before the budget was counted: start from zero
            return
        self.reward_calls, self.model_evals = int(state["reward_calls"]), int(state["model_evals"])
        self.seconds_before = float(state["seconds"])
        if self._started is not None:
            self._started, self.eval_seconds = time.perf_counter(), 0.0


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(peak memory in MiB, where it was read) for ``device`` (see the module doc)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return float("nan"), "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process peak RSS (getrusage)"


def budget_figures(budget: Budget, device: torch.device, dist: Any = None) -> dict[str, Any]:
    """The budget entries of a run's ``final`` (summed over ranks under several processes)."""
    counts = budget.counts()
    if dist is not None and dist.enabled:
        shares = dist.gather_object(counts)
        counts = {k: sum(int(s[k]) for s in shares) for k in counts}
    mb, source = peak_memory(device)
    return {**counts, "train_seconds": round(budget.seconds(), 3), "peak_memory_mb": round(mb, 1),
            "peak_memory_source": source}


# --------------------------------------------------------------------------- what a run reports of its method


def method_knob(config: Any) -> tuple[str, float]:
    """The method's main knob and its value: alpha for ORW's family, kl_beta for flow-grpo, nft_beta for nft."""
    if config.method == "flow-grpo":
        return "kl_beta", float(config.kl_beta)
    if config.method == "nft":
        return "nft_beta", float(config.nft_beta)
    return "alpha", float(config.effective_alpha)


def align_final(objective: Any, config: Any, trainer: Any, device: torch.device, dist: Any) -> dict[str, Any]:
    """An align run's ``final``: the last evaluation, the method's knob (ORW's family: ``final_alpha``, alpha as it
    ended - a W2 budget moves it; flow-grpo: ``kl_beta``; nft: ``nft_beta``), the running W2 term, skipped
    rewards, steps and the budget (:func:`budget_figures`)."""
    knob, value = method_knob(config)
    final = {**trainer.last_eval, **({"final_alpha": objective.final_alpha()} if knob == "alpha" else {knob: value}),
             "w2_bound_running": None if objective.w2_running is None else float(objective.w2_running),
             "bad_rewards_skipped": objective.bad_total, "steps": trainer.step,
             **budget_figures(objective.budget, device, dist)}
    if dist.enabled:
        final["ranks_in_sync"] = trainer.ranks_in_sync
    return final


def run_title(config: Any) -> str:
    """The title of a run's training-curve plot: the method and its own settings."""
    if config.method == "flow-grpo":
        return (f"flow-grpo kl_beta={config.kl_beta:g} G={config.group_size} clip={config.clip_range:g} "
                f"noise={config.sde_noise:g}")
    if config.method == "nft":
        return f"nft nft_beta={config.nft_beta:g} G={config.group_size}"
    pool = f" pool={config.rollout_pool}" if getattr(config, "rollout_pool", 0) else ""
    if getattr(config, "target_beta", None) is not None:
        anchor = f" anchor={config.anchor_share:g}" if getattr(config, "anchor_share", 0) else ""
        return (f"{config.method} target_beta={config.target_beta:g} tau={config.tau:g} ({config.target_refreshes} "
                f"phases){anchor}{pool}")
    return f"{config.method} alpha={config.effective_alpha:g} tau={config.tau:g}{pool}"
