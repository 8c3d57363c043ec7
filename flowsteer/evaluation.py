"""``flowsteer evaluate``: the metrics of METHODS.md section 4 for any run folder, as one JSON object.

Every figure is computed from one seeded batch of noise, so the same run, options and seed give the
same JSON byte for byte.  The object's fields (all optional parts are absent when not asked for):

* ``run``, ``method``, ``flowsteer_version``, ``n``, ``seed``, ``nfes``, ``solver``: what was evaluated.
  Samples are drawn with ``solver`` (Euler for sigma = 0, Euler-Maruyama otherwise) at each NFE in
  ``nfes``; the headline figures use the largest NFE.
* ``reward``: ``spec``, ``mean``, ``std``, ``min``, ``max``, ``q10``, ``q50``, ``q90``, ``n_nonfinite``.
* ``classes`` (rewards with a classifier, e.g. ``even-digits``): ``histogram`` (fraction per class),
  ``entropy`` (nats), ``top_class`` and its ``top_fraction``.
* ``diversity``: ``pairwise_distance`` (mean L2 over distinct pairs, data units).
* ``reference`` (``--reference RUN``): ``run`` and ``w2`` between this run's and the reference's
  samples from the same noise.
* ``target`` (``--target``): ``spec``, ``n_heldout``, ``w2`` to held-out target samples and ``frechet``
  distance on features (digit-classifier logits for 8x8 images, coordinates otherwise).
* ``per_nfe``: a list, one object per NFE in increasing order: ``nfe`` and the figures at that number
  of steps (``reward_mean``, ``w2_target``, ``frechet_target``, ``w2_reference``, as asked for).
* ``paths`` (sigma = 0): ``path_length`` and ``straightness`` of 100 Euler steps (model units).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .errors import ConfigError, DataError
from .metrics import class_histogram, entropy, frechet_distance, mean_pairwise_distance, path_metrics, wasserstein2
from .runs import Run, load_run
from .solvers import integrate

DEFAULT_NFES = (1, 2, 4, 8, 50)


@dataclass
class EvaluationConfig:
    """What ``flowsteer evaluate`` computes.

    Attributes:
        model: run folder to evaluate.  reward: reward spec (see :func:`flowsteer.rewards.build_reward`).
        reference: run folder whose samples (same noise) W2 is measured to, e.g. the base of a fine-tune.
        target: data spec whose held-out split W2 and the Frechet distance are measured to.
        n: samples.  nfes: numbers of steps to sample with.  seed: seeds the noise, labels and SDE.
    """

    model: str
    reward: str | None = None
    reference: str | None = None
    target: str | None = None
    n: int = 1000
    nfes: tuple[int, ...] = DEFAULT_NFES
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.n, int) or self.n < 2:
            problems.append(f"--n must be an integer >= 2 (got {self.n!r})")
        if not self.nfes or any(int(k) < 1 for k in self.nfes):
            problems.append(f"--nfe must list integers >= 1 (got {','.join(map(str, self.nfes)) or 'nothing'})")
        return problems


def _sample(run: Run, x0: Tensor, cond: dict[str, Tensor], nfe: int, seed: int) -> Tensor:
    solver = "euler-maruyama" if run.sigma > 0 else "euler"
    cond = {**run.condition(x0.shape[0]), **cond}  # a text-conditioned run's prompt states
    res = integrate(run.model, x0, solver=solver, steps=nfe, sigma=run.sigma, cond=cond,
                    generator=torch.Generator().manual_seed(seed + 1))
    return run.decode(res.x)


def _features(x: Tensor) -> Tensor:
    from .methods.gft import target_features

    return target_features(x)


def _reward_stats(r: Tensor) -> dict[str, Any]:
    ok = r[torch.isfinite(r)].double()
    if ok.numel() == 0:
        return {"n_nonfinite": int(r.numel())}
    q = torch.quantile(ok, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"mean": float(ok.mean()), "std": float(ok.std()) if ok.numel() > 1 else 0.0, "min": float(ok.min()),
            "max": float(ok.max()), "q10": float(q[0]), "q50": float(q[1]), "q90": float(q[2]),
            "n_nonfinite": int(r.numel() - ok.numel())}


def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Evaluate ``config.model``; returns the JSON-ready dict documented in the module docstring."""
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    run = load_run(config.model)
    nfes = tuple(sorted({int(k) for k in config.nfes}))
    reward = reference = target = None
    if config.reward:
        from .rewards import build_reward

        reward = build_reward(config.reward)
    if config.reference:
        reference = load_run(config.reference)
        if reference.shape != run.shape:
            raise DataError(f"--reference makes samples of shape {reference.shape}, the model {run.shape}; "
                            "compare runs of one data shape")
    if config.target:
        from .data import load_data

        data = load_data(config.target, normalize="none")
        if data.train.shape != run.shape:
            raise DataError(f"target {config.target!r} has samples of shape {data.train.shape}, but the model makes "
                            f"{run.shape}; evaluate against data of the model's shape")
        g = torch.Generator().manual_seed(config.seed + 2)
        held = data.heldout.x
        target = held[torch.randperm(len(held), generator=g)[: config.n]]
        target_feats = _features(target)

    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    x0 = torch.randn((config.n, *run.shape), generator=g)
    cond = {"y": torch.randint(0, run.num_classes, (config.n,), generator=g)} if run.num_classes else {}
    ref_cond = cond if reference is not None and reference.num_classes == run.num_classes else {}

    from .rewards.protocol import score

    out: dict[str, Any] = {
        "flowsteer_version": __version__, "run": str(config.model), "method": run.config.get("method"),
        "n": config.n, "seed": config.seed, "nfes": list(nfes),
        "solver": "euler-maruyama" if run.sigma > 0 else "euler",
    }
    per_nfe: dict[int, dict[str, float]] = {}
    x = r = None
    for nfe in nfes:
        x = _sample(run, x0, cond, nfe, config.seed)
        row: dict[str, float] = {"nfe": nfe}
        if reward is not None:
            r = score(reward, x, cond)
            row["reward_mean"] = float(r[torch.isfinite(r)].mean())
        if target is not None:
            row["w2_target"] = wasserstein2(x, target)
            row["frechet_target"] = frechet_distance(_features(x), target_feats)
        if reference is not None:
            row["w2_reference"] = wasserstein2(x, _sample(reference, x0, ref_cond, nfe, config.seed))
        per_nfe[nfe] = row
    assert x is not None  # nfes is non-empty (validated)
    top = nfes[-1]
    if reward is not None:
        assert r is not None  # the rewards of the largest NFE's samples, from the loop
        out["reward"] = {"spec": config.reward, **_reward_stats(r)}
        classify = getattr(reward, "classify", None)
        if callable(classify):
            k = int(getattr(reward, "num_classes", 10))
            hist = class_histogram(classify(x), k)
            out["classes"] = {"histogram": [float(v) for v in hist], "entropy": entropy(hist),
                              "top_class": int(np.argmax(hist)), "top_fraction": float(np.max(hist))}
    out["diversity"] = {"pairwise_distance": mean_pairwise_distance(x)}
    if reference is not None:
        out["reference"] = {"run": str(config.reference), "w2": per_nfe[top]["w2_reference"]}
    if target is not None:
        out["target"] = {"spec": config.target, "n_heldout": int(len(target)), "w2": per_nfe[top]["w2_target"],
                         "frechet": per_nfe[top]["frechet_target"]}
    out["per_nfe"] = [per_nfe[k] for k in nfes]
    if run.sigma == 0:
        paths_cond = {**run.condition(min(config.n, 500)), **{k: v[:500] for k, v in cond.items()}}
        out["paths"] = path_metrics(run.model, x0[: min(config.n, 500)], cond=paths_cond)
    return out


def evaluation_json(result: dict[str, Any]) -> str:
    """The text ``flowsteer evaluate`` writes: sorted keys, 2-space indent, a final newline."""
    import json

    return json.dumps(result, indent=2, sort_keys=True) + "\n"


def write_evaluation(result: dict[str, Any], path: Path) -> None:
    """Write :func:`evaluation_json` of ``result`` to ``path`` atomically."""
    from .io import atomic_write_text

    atomic_write_text(path, evaluation_json(result))
