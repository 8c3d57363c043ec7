"""One metric vocabulary and one implementation, for training-time evaluation and ``flowsteer evaluate``.

:class:`SampleMetrics` turns a batch of samples (data units) into figures with these names, wherever
they are reported (``metrics.jsonl``, ``final_metrics.json``, ``evaluation.json``, the report):

==========================  ==================================================================
``reward_mean``             mean reward over the finite rewards (also ``_std``, ``_min``, ``_max``,
                            ``_q10``, ``_q50``, ``_q90``; ``reward_nonfinite`` counts the others)
``class_histogram``         share of samples per predicted class (rewards with ``classify``)
``class_entropy``           entropy of that histogram in nats (``top_class``, ``top_class_share``)
``pairwise_distance``       mean L2 distance over distinct pairs (diversity)
``w2_to_reference``         W2 to the reference model's samples from the same noise (e.g. the base)
``w2_to_target``            W2 to held-out target samples
``fd_to_target``            Frechet distance to them on :func:`frechet_features`
``path_length``             mean path length of 100 Euler steps (model units; ``straightness`` too)
``memorised_share``         share of samples nearer a training target than the targets' median
                            nearest-neighbour distance (``adapt`` with ``--n-target``)
==========================  ==================================================================

A figure measured at ``k`` solver steps during training is named ``NAME_nfeK`` (``w2_to_target_nfe4``).
:class:`AlignEvaluator` and :class:`AdaptEvaluator` are the evaluation callbacks of ``align`` and
``adapt``; :mod:`flowsteer.evaluation` uses :class:`SampleMetrics` for ``flowsteer evaluate``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .errors import TrainingStopped
from .interrupts import interruptible
from .metrics import (class_histogram, entropy, frechet_distance, mean_pairwise_distance, memorised_share, path_metrics,
                      wasserstein2)
from .models.weights import swapped_weights
from .rewards.classifier import digit_logits
from .rewards.protocol import classify, nonfinite_error, num_classes as class_count, score
from .solvers import integrate


def frechet_features(x: Tensor) -> Tensor:
    """Features for the Frechet distance: the digit classifier's logits for 8x8 images, coordinates otherwise."""
    if tuple(x.shape[1:]) == (1, 8, 8):
        return digit_logits(x)
    return x.reshape(x.shape[0], -1)


def nfe_name(name: str, nfe: int) -> str:
    """The name of a figure measured at ``nfe`` solver steps: ``w2_to_target_nfe4``."""
    return f"{name}_nfe{nfe}"


def reward_statistics(r: Tensor) -> dict[str, Any]:
    """``reward_mean`` .. ``reward_q90`` over the finite entries of ``r`` ``[B]``, and ``reward_nonfinite``."""
    ok = r[torch.isfinite(r)].double().cpu()
    out: dict[str, Any] = {"reward_nonfinite": int(r.numel() - ok.numel())}
    if ok.numel() == 0:
        return out
    q = torch.quantile(ok, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device="cpu"))
    out.update({"reward_mean": float(ok.mean()), "reward_std": float(ok.std()) if ok.numel() > 1 else 0.0,
                "reward_min": float(ok.min()), "reward_max": float(ok.max()),
                "reward_q10": float(q[0]), "reward_q50": float(q[1]), "reward_q90": float(q[2])})
    return out


class SampleMetrics:
    """The figures of one batch of samples, named as in the module doc.

    Args:
        reward: a reward callable (its ``classify`` and ``num_classes``, if present, give the class figures).
        target: held-out target samples ``[M, *D]`` (data units) for ``w2_to_target`` / ``fd_to_target``.
        reward_timeout: seconds one reward call may take.
    """

    def __init__(self, *, reward: Any = None, target: Tensor | None = None, reward_timeout: float | None = None) -> None:
        self.reward, self.target, self.reward_timeout = reward, target, reward_timeout
        self.target_features = frechet_features(target) if target is not None else None

    def rewards(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return score(self.reward, x, cond or {}, timeout=self.reward_timeout)

    def __call__(self, x: Tensor, cond: dict[str, Tensor] | None = None, *, reference: Tensor | None = None,
                 rewards: Tensor | None = None, diversity: bool = True) -> dict[str, Any]:
        """Figures of samples ``x`` ``[B, *D]``; ``reference``: the reference's samples from the same noise;
        ``rewards``: already computed rewards of ``x`` (not scored again)."""
        out: dict[str, Any] = {}
        if self.reward is not None:
            stats = reward_statistics(self.rewards(x, cond) if rewards is None else rewards)
            if stats["reward_nonfinite"] == x.shape[0]:  # no figure to report: the reward (or the model) is broken
                if not bool(torch.isfinite(x).all()):
                    raise TrainingStopped("the model's samples are NaN or inf, so the reward cannot score them: the "
                                          "model diverged - use an earlier checkpoint, or train again with a lower --lr")
                raise nonfinite_error(self.reward, x.shape[0], x.shape[0], skip_option=False)
            out.update(stats)
            labels = classify(self.reward, x, timeout=self.reward_timeout)
            if labels is not None:
                hist = class_histogram(labels, class_count(self.reward))
                out["class_histogram"] = [round(float(v), 4) for v in hist]
                out["class_entropy"] = entropy(hist)
                out["top_class"] = int(np.argmax(hist))
                out["top_class_share"] = float(np.max(hist))
        if diversity:
            out["pairwise_distance"] = mean_pairwise_distance(x)
        if reference is not None:
            out["w2_to_reference"] = wasserstein2(x, reference)
        if self.target is not None:
            out["w2_to_target"] = wasserstein2(x, self.target)
            out["fd_to_target"] = frechet_distance(frechet_features(x), self.target_features)
        return out


def _sampling_model(trainer: Any) -> Any:
    """The trainer's network with its sampling weights (the EMA when enabled) swapped in."""
    if trainer.ema is None:
        return _NoSwap(trainer.model)
    return swapped_weights(trainer.model, trainer.sampling_state_dict())


class _NoSwap:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *_: Any) -> None:
        return None


class AlignEvaluator:
    """``align``'s evaluation: reward, classes, diversity and ``w2_to_reference`` on one fixed noise batch.

    Args:
        reference: the reference model (the base); its samples are drawn once.
        metrics: the :class:`SampleMetrics` (with the run's reward).
        decode: model units -> data units.  shape: the sample shape.
        n, solver, steps: samples per evaluation and how they are drawn.  sigma: the path's diffusion.
        num_classes: > 0 for class-conditional models (labels drawn once).  condition: ``condition(n)`` -> the
            conditions every sample gets (a text-conditioned base's prompt states).
    """

    def __init__(self, *, reference: nn.Module, metrics: SampleMetrics, decode: Callable[[Tensor], Tensor],
                 shape: tuple[int, ...], n: int, solver: str, steps: int, sigma: float, num_classes: int = 0,
                 condition: Callable[[int], dict[str, Tensor]] | None = None, device: torch.device | None = None) -> None:
        self.metrics, self.decode = metrics, decode
        self.solver, self.steps, self.sigma = solver, steps, sigma
        self.device = torch.device(device or "cpu")
        g = torch.Generator().manual_seed(12345)  # the same evaluation noise on every device
        self.x0 = torch.randn((n, *shape), generator=g, device="cpu").to(self.device)
        self.cond = dict(condition(n)) if condition is not None else {}
        if num_classes:
            self.cond["y"] = torch.randint(0, num_classes, (n,), generator=g, device="cpu").to(self.device)
        self.reference_x = self.sample(reference)

    def sample(self, model: nn.Module) -> Tensor:
        with interruptible():  # inside any swap of weights (see flowsteer.interrupts)
            res = integrate(model, self.x0, solver=self.solver, steps=self.steps, sigma=self.sigma, cond=self.cond,
                            generator=torch.Generator(device=self.device).manual_seed(54321))
        return self.decode(res.x)

    def __call__(self, trainer: Any) -> dict[str, Any]:
        with _sampling_model(trainer) as model:
            x = self.sample(model.eval())
        return self.metrics(x, self.cond, reference=self.reference_x)


class AdaptEvaluator:
    """``adapt``'s evaluation: ``w2_to_target`` and ``fd_to_target`` per NFE, path length and straightness.

    At the largest NFE also the diversity figures: ``memorised_share`` against ``targets`` (when given) and,
    for 8x8 digits, ``class_entropy`` / ``class_histogram`` of the digit classifier's labels (10 classes).

    Args:
        heldout: held-out target samples (data units); ``n`` of them are kept.
        decode, shape, sigma: as for :class:`AlignEvaluator`.  nfes: Euler (or Euler-Maruyama) step counts.
        condition: conditions every sample gets (a text-conditioned base's prompt states), or None.
        targets: the training targets (data units) for ``memorised_share``, or None.
        paths: also measure ``path_length`` and ``straightness`` (sigma = 0; 100 more steps per evaluation).
    """

    def __init__(self, heldout: Tensor, *, decode: Callable[[Tensor], Tensor], shape: tuple[int, ...], sigma: float,
                 n: int, nfes: tuple[int, ...], condition: Callable[[int], dict[str, Tensor]] | None = None,
                 device: torch.device | None = None, targets: Tensor | None = None, paths: bool = True) -> None:
        self.decode, self.sigma, self.nfes, self.paths = decode, sigma, tuple(nfes), paths
        self.targets = targets.detach().cpu() if targets is not None and targets.shape[0] >= 2 else None
        self.device = torch.device(device or "cpu")
        g = torch.Generator().manual_seed(2024)
        n = min(n, heldout.shape[0])
        target = heldout[torch.randperm(heldout.shape[0], generator=g, device="cpu")[:n]]
        self.x0 = torch.randn((n, *shape), generator=g, device="cpu").to(self.device)
        self.cond = dict(condition(n)) if condition is not None else {}
        self.metrics = SampleMetrics(target=target.to(self.device))

    def __call__(self, trainer: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        solver = "euler-maruyama" if self.sigma > 0 else "euler"
        with _sampling_model(trainer) as model:
            model.eval()
            for nfe in self.nfes:
                res = integrate(model, self.x0, solver=solver, steps=nfe, sigma=self.sigma, cond=self.cond,
                                generator=torch.Generator(device=self.device).manual_seed(7))
                x = self.decode(res.x)
                figures = self.metrics(x, diversity=False)
                if nfe == max(self.nfes):
                    figures.update(self.diversity(x))
                out.update({nfe_name(k, nfe): v for k, v in figures.items()})
            if self.sigma == 0 and self.paths:
                out.update(path_metrics(model, self.x0, cond=self.cond))
        return out

    def diversity(self, x: Tensor) -> dict[str, Any]:
        """``memorised_share`` (with training targets) and the digit classes of 8x8 samples ``x`` (data units)."""
        out: dict[str, Any] = {}
        if self.targets is not None:
            out["memorised_share"] = memorised_share(x, self.targets)
        if tuple(x.shape[1:]) == (1, 8, 8):
            hist = class_histogram(digit_logits(x).argmax(dim=1), 10)
            out["class_histogram"] = [round(float(v), 4) for v in hist]
            out["class_entropy"] = entropy(hist)
        return out
