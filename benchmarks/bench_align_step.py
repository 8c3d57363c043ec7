"""One align step (rollout + reward + loss + update): flowsteer vs a bare hand-written loop.

Both do the same maths with the same model, batch and optimiser on the even-digits task: refresh the
lagged policy every K steps, roll out B samples with Euler, score them with the digit classifier,
w = B softmax(tau r), weighted CFM on fresh noise plus alpha ||v - v_ref||^2, backward, clip, Adam.
Chunks of both loops alternate within one process (the machine is noisy; the ratio holds).

    python benchmarks/bench_align_step.py [--steps 120] [--rounds 3]

Target (issue 3): ratio <= 1.10.  Needs a pretrained digits run (made here if missing, 300 steps).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flowsteer import PretrainConfig, TrainConfig, load_run, pretrain
from flowsteer.config import align_train_defaults
from flowsteer.methods.orw import AlignConfig, RewardWeightedObjective
from flowsteer.models import build_model
from flowsteer.rewards import build_reward
from flowsteer.rewards.classifier import digit_probabilities
from flowsteer.training import Trainer


class BareAlign:
    def __init__(self, base, cfg: AlignConfig) -> None:
        torch.manual_seed(0)
        self.model = build_model(base.config["model"])
        self.model.load_state_dict(base.model.state_dict())
        self.ref = base.model
        self.policy = copy.deepcopy(self.model).eval()
        self.cfg, self.g, self.k = cfg, torch.Generator().manual_seed(0), 0
        self.params = list(self.model.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.train.lr)
        self.shape = base.shape

    def run(self, steps: int) -> None:
        cfg, b = self.cfg, self.cfg.train.batch_size
        for _ in range(steps):
            k = self.k
            for group in self.opt.param_groups:
                group["lr"] = cfg.train.lr * min(1.0, (k + 1) / cfg.train.warmup_steps)
            if k % cfg.refresh_every == 0:
                self.policy.load_state_dict(self.model.state_dict())
            with torch.inference_mode():
                x = torch.randn((b, *self.shape), generator=self.g)
                h = 1.0 / cfg.rollout_steps
                for i in range(cfg.rollout_steps):
                    x = x + h * self.policy(torch.full((b,), i * h), x)
            x1 = x.clone()
            r = digit_probabilities(x1)[:, [0, 2, 4, 6, 8]].sum(1)
            w = torch.softmax(cfg.tau * r, 0) * b
            x0 = torch.randn(x1.shape, generator=self.g)
            t = torch.rand(b, generator=self.g)
            tt = t.reshape(-1, 1, 1, 1)
            x_t = (1 - tt) * x0 + tt * x1
            pred = self.model(t, x_t)
            with torch.no_grad():
                ref = self.ref(t, x_t)
            loss = (w * ((pred - (x1 - x0)) ** 2).flatten(1).mean(1)).mean() + cfg.alpha * ((pred - ref) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.grad_clip)
            self.opt.step()
            self.k += 1


class FlowsteerAlign:
    """flowsteer's Trainer on ``cfg`` (its reward, from ``base``'s weights); ``run(n)`` trains n more steps."""

    def __init__(self, base, cfg: AlignConfig) -> None:
        torch.manual_seed(0)
        model = build_model(base.config["model"])
        model.load_state_dict(base.model.state_dict())
        g = torch.Generator().manual_seed(0)
        obj = RewardWeightedObjective(reference=base.model, reward=build_reward(cfg.reward), config=cfg,
                                      decode=base.decode, shape=base.shape, sigma=base.sigma, generator=g)
        self.trainer = Trainer(model, obj, TrainConfig(**{**cfg.train.__dict__, "steps": 1}), generator=g)

    def run(self, steps: int) -> None:
        self.trainer.config.steps = self.trainer.step + steps
        self.trainer.fit()


def digits_base(path: str) -> Path:
    """``path`` if it holds a run, else a digits base pretrained here (300 steps) in a temporary folder."""
    base_dir = Path(path)
    if not (base_dir / "model.safetensors").exists():
        base_dir = Path(tempfile.mkdtemp()) / "digits"
        pretrain(PretrainConfig(data="digits", train=TrainConfig(steps=300)), base_dir, progress="quiet")
    return base_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/digits")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=10)
    args = ap.parse_args()
    base_dir = digits_base(args.base)
    base = load_run(base_dir)
    # Euler rollouts: the hand-written loop's (and the default when its ratio was measured; Heun since session 7)
    cfg = AlignConfig(base=str(base_dir), reward="even-digits", rollout_solver="euler", train=align_train_defaults())
    ratios = []
    for r in range(args.rounds):
        bare, ours = BareAlign(base, cfg), FlowsteerAlign(base, cfg)
        bare.run(3), ours.run(3)
        spent = {"bare": 0.0, "ours": 0.0}
        for i in range(args.steps // args.chunk):
            order = [("bare", bare), ("ours", ours)] if i % 2 == 0 else [("ours", ours), ("bare", bare)]
            for name, loop in order:
                start = time.perf_counter()
                loop.run(args.chunk)
                spent[name] += time.perf_counter() - start
        n = (args.steps // args.chunk) * args.chunk
        ratios.append(spent["ours"] / spent["bare"])
        print(f"round {r}: bare {spent['bare'] / n * 1e3:.1f} ms/step, flowsteer {spent['ours'] / n * 1e3:.1f} ms/step, "
              f"ratio {ratios[-1]:.3f}")
    print(f"batch={cfg.train.batch_size} rollout={cfg.rollout_solver}x{cfg.rollout_steps} threads={torch.get_num_threads()}")
    print(f"median ratio (flowsteer / bare) = {statistics.median(ratios):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
