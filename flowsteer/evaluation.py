"""``flowsteer evaluate``: the figures of :mod:`flowsteer.evaluators` for any run folder, as one JSON object.

Every figure is computed from one seeded batch of noise, so the same run, options and seed give the
same JSON byte for byte.  The object's fields (the optional parts are absent when not asked for):

* ``run``, ``method``, ``flowsteer_version``, ``n``, ``seed``, ``nfes``, ``solver``: what was evaluated.
  Samples are drawn with ``solver`` (Euler for sigma = 0, Euler-Maruyama otherwise) at each NFE in
  ``nfes``; ``metrics`` holds the figures at the largest NFE.
* ``reward_spec``, ``reference_run``, ``target_spec`` and ``n_heldout``: what the figures were measured
  against (``--reward``, ``--reference``, ``--target``).
* ``metrics``: the figures, named as everywhere in flowsteer (:mod:`flowsteer.evaluators`):
  ``reward_mean`` .. ``reward_q90``, ``reward_nonfinite``, ``class_histogram``, ``class_entropy``,
  ``top_class``, ``top_class_share``, ``pairwise_distance``, ``w2_to_reference``, ``w2_to_target``,
  ``fd_to_target``, and for sigma = 0 ``path_length`` and ``straightness``.
* ``per_nfe``: one object per NFE in increasing order: ``nfe`` and ``reward_mean``, ``w2_to_target``,
  ``fd_to_target``, ``w2_to_reference`` at that number of steps (as asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .config import EvaluationConfig
from .data import load_data
from .devices import resolve_device
from .errors import ConfigError, DataError
from .evaluators import SampleMetrics
from .io import atomic_write_text, json_text
from .metrics import path_metrics
from .rewards import build_reward
from .runs import Run, load_run
from .solvers import integrate

PER_NFE_FIGURES = ("reward_mean", "w2_to_target", "fd_to_target", "w2_to_reference")

__all__ = ["EvaluationConfig", "evaluate", "evaluation_json", "write_evaluation"]


def _sample(run: Run, x0: Tensor, cond: dict[str, Tensor], nfe: int, seed: int) -> Tensor:
    solver = "euler-maruyama" if run.sigma > 0 else "euler"
    cond = {**run.condition(x0.shape[0]), **cond}  # a text-conditioned run's prompt states
    res = integrate(run.model, x0, solver=solver, steps=nfe, sigma=run.sigma, cond=cond,
                    generator=torch.Generator().manual_seed(seed + 1))
    return run.decode(res.x)


def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Evaluate ``config.model``; returns the JSON-ready dict documented in the module docstring."""
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    device = resolve_device(config.device)
    run = load_run(config.model, device=device)
    nfes = tuple(sorted({int(k) for k in config.nfes}))
    reward = build_reward(config.reward) if config.reward else None
    reference = target = None
    if config.reference:
        reference = load_run(config.reference, device=device)
        if reference.shape != run.shape:
            raise DataError(f"--reference makes samples of shape {reference.shape}, the model {run.shape}; "
                            "compare runs of one data shape")
    if config.target:
        data = load_data(config.target, normalize="none")
        if data.train.shape != run.shape:
            raise DataError(f"target {config.target!r} has samples of shape {data.train.shape}, but the model makes "
                            f"{run.shape}; evaluate against data of the model's shape")
        held = data.heldout.x
        order = torch.randperm(len(held), generator=torch.Generator().manual_seed(config.seed + 2), device="cpu")
        target = held[order[: config.n]].to(device)
    metrics = SampleMetrics(reward=reward, target=target)

    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)  # drawn on the CPU: the same noise on every device
    x0 = torch.randn((config.n, *run.shape), generator=g, device="cpu").to(device)
    cond = {"y": torch.randint(0, run.num_classes, (config.n,), generator=g, device="cpu").to(device)} \
        if run.num_classes else {}
    ref_cond = cond if reference is not None and reference.num_classes == run.num_classes else {}

    out: dict[str, Any] = {
        "flowsteer_version": __version__, "run": str(config.model), "method": run.config.get("method"),
        "n": config.n, "seed": config.seed, "nfes": list(nfes),
        "solver": "euler-maruyama" if run.sigma > 0 else "euler",
    }
    if reward is not None:
        out["reward_spec"] = config.reward
    if reference is not None:
        out["reference_run"] = str(config.reference)
    if target is not None:
        out["target_spec"], out["n_heldout"] = config.target, int(len(target))
    per_nfe, figures = [], {}
    for nfe in nfes:  # the largest NFE comes last: its figures (diversity and classes included) are kept
        x = _sample(run, x0, cond, nfe, config.seed)
        ref_x = _sample(reference, x0, ref_cond, nfe, config.seed) if reference is not None else None
        figures = metrics(x, cond, reference=ref_x, diversity=nfe == nfes[-1])
        per_nfe.append({"nfe": nfe, **{k: figures[k] for k in PER_NFE_FIGURES if k in figures}})
    if run.sigma == 0:
        m = min(config.n, 500)
        paths_cond = {**run.condition(m), **{k: v[:m] for k, v in cond.items()}}
        figures.update(path_metrics(run.model, x0[:m], cond=paths_cond))
    out["metrics"] = figures
    out["per_nfe"] = per_nfe
    return out


def evaluation_json(result: dict[str, Any]) -> str:
    """The text ``flowsteer evaluate`` writes: sorted keys, 2-space indent, a final newline."""
    return json_text(result)


def write_evaluation(result: dict[str, Any], path: Path) -> None:
    """Write :func:`evaluation_json` of ``result`` to ``path`` atomically."""
    atomic_write_text(path, evaluation_json(result))



def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for people: what was measured, then the figures at the largest NFE (``result`` as
    :func:`evaluate` returns it)."""
    m, nfes = result.get("metrics", {}), result.get("nfes") or [0]

    def num(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    lines = [f"evaluated {result.get('run')}: {result.get('n')} samples, {result.get('solver')} at {max(nfes)} NFE "
             f"(seed {result.get('seed')})"]
    if (reward := num("reward_mean")) is not None:
        from .report.summary import reward_name

        spec = result.get("reward_spec")
        name = reward_name(spec) if reward_name(spec) != "mean reward" else f"mean reward ({spec})"
        line = f"  {name} {reward:.3f}"
        if (entropy := num("class_entropy")) is not None:
            line += f", class entropy {entropy:.3f} nats, top class {m.get('top_class')} " \
                    f"({100 * (num('top_class_share') or 0):.0f} % of samples)"
        lines.append(line)
    if (w2 := num("w2_to_reference")) is not None:
        lines.append(f"  W2 to the reference {result.get('reference_run')}: {w2:.3f}")
    if (fd := num("fd_to_target")) is not None:
        few = {int(r["nfe"]): r for r in result.get("per_nfe", [])}.get(4, {})
        lines.append(f"  to {result.get('target_spec')} ({result.get('n_heldout')} held-out samples): W2 "
                     f"{num('w2_to_target') or float('nan'):.3f}, Frechet distance {fd:.3f}"
                     + (f" ({few['fd_to_target']:.3f} at 4 NFE)" if "fd_to_target" in few else ""))
    if (length := num("path_length")) is not None:
        lines.append(f"  path length {length:.3f}, straightness {num('straightness') or float('nan'):.3f}")
    return lines
