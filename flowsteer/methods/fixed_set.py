"""A fixed set of the reference model's (q0's) samples: RWR's data, and the anchor of ``--anchor-share``.

With ``--target-beta`` and ``anchor_share = rho`` the last ``round(rho B)`` samples of each batch come from a
fixed set of q0's samples (drawn once, like RWR's) weighted by ``exp(n tau r)`` in phase n, the policy's by
``exp(tau r)``, each part normalised to mean 1: the batch then fits ``(1-rho) q_{n-1} exp(tau r) + rho q0
exp(n tau r)``.  Both terms are Theorem 2's ``q0 exp(n tau r)`` when every phase is fitted exactly; when one is
not, the anchor's term does not inherit its error, so the phases' errors stop adding up (without it the even
classes' shares of the digits benchmarks random-walk away from the optimum's).

The set is drawn once, when the objective is made, first thing from the run's freshly seeded generator: a
resume draws the same set again (each process its own), so checkpoints do not hold it.

``--rollout-pool P`` keeps a set of the sampling policy's samples instead: P of them, drawn at each refresh and
used until the next.  Its draw takes its own generator (:func:`pool_generator`), seeded from the run's seed
(each process's own) and the refresh's step, so a resume between two refreshes draws the same pool again from
the saved policy, bitwise, and checkpoints do not hold it either.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["FixedSet", "counted", "pool_generator"]


@dataclass
class FixedSet:
    """Samples ``x`` ``[n, *D]`` of one model (q0, or the sampling policy), their rewards ``r`` ``[n]`` (all finite) and class labels ``y`` ``[n]``."""

    x: Tensor
    r: Tensor
    y: Tensor | None = None

    @classmethod
    def draw(cls, rollout: Callable[[int], tuple[Tensor, dict[str, Tensor]]],
             score: Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]], *, n: int, batch: int) -> "FixedSet":
        """``n`` samples in chunks of ``batch``: ``rollout(b) -> (x, cond)``, ``score(x, cond) -> (r, valid)``.
        Samples whose reward was not finite (``--on-bad-reward skip``) are left out, so that no draw from the set
        is all invalid; a chunk whose rewards are all bad stops the run in ``score``, as a batch would."""
        xs, rs, vs, ys = [], [], [], []
        for start in range(0, n, batch):
            x, cond = rollout(min(batch, n - start))
            r, valid = score(x, cond)
            xs.append(x), rs.append(r), vs.append(valid)
            if "y" in cond:  # a class label (a prompt's states are the same for every sample)
                ys.append(cond["y"])
        keep = torch.cat(vs)
        return cls(x=torch.cat(xs)[keep], r=torch.cat(rs)[keep], y=torch.cat(ys)[keep] if ys else None)

    def sample(self, b: int, generator: torch.Generator, condition: Callable[[int], Any] | None = None):
        """``b`` samples drawn with replacement, as a batch: ``(x, cond, r, valid)``; ``condition(b)`` gives the
        conditions every sample shares (a prompt's states)."""
        idx = torch.randint(0, self.x.shape[0], (b,), generator=generator, device=self.x.device)
        cond = {**(condition(b) if condition is not None else {}), **({"y": self.y[idx]} if self.y is not None else {})}
        return self.x[idx], cond, self.r[idx], torch.ones(b, dtype=torch.bool, device=self.x.device)


def pool_generator(run: torch.Generator, refresh_step: int) -> torch.Generator:
    """The generator of the rollout pool drawn at ``refresh_step``, on ``run``'s device: seeded from ``run``'s
    initial seed (the run's seed, or this process's) and the step alone, so that it does not depend on how much
    of ``run``'s stream was used before (a resume draws the same pool again).  The seed is a tagged hash, so it
    is no other run's, process's or step's seed (``seed + step`` would give seed 0's first pool the stream of a
    ``--seed 1`` run, or of process 1)."""
    digest = hashlib.blake2b(f"flowsteer rollout pool {run.initial_seed()} {refresh_step}".encode(), digest_size=8)
    return torch.Generator(device=run.device).manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


@contextlib.contextmanager
def counted(objective: Any, *, keep: bool):
    """The block's reward calls, model evaluations and bad rewards stay in ``objective``'s counts (``budget``,
    ``bad_total``) only if ``keep`` and the block finishes: a pool drawn again after a resume is the one an
    uninterrupted run drew and counted once, and a draw cut short is drawn again whole (and counted then)."""
    counts = (objective.budget.reward_calls, objective.budget.model_evals, objective.bad_total)
    finished = False
    try:
        yield
        finished = True
    finally:
        if not (keep and finished):
            objective.budget.reward_calls, objective.budget.model_evals, objective.bad_total = counts
