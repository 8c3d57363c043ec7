"""Pretraining loop overhead: flowsteer's Trainer vs a bare hand-written PyTorch loop.

Both loops do the same maths on the same model, batch and optimiser: draw a
minibatch of data, noise and times, build the linear path, MSE to the target,
backward, clip the gradient norm, Adam step with linear warm-up, EMA update.
They alternate in chunks of 20 steps within one process (the machine is shared and noisy:
absolute times drift, the ratio holds) and the script prints the median ratio.

    python benchmarks/bench_pretrain_step.py [--data digits] [--steps 300] [--rounds 5]

Target (issue 2: <= 1.10; issue 13: <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowsteer.couplings import IndependentCoupling
from flowsteer.data import load_data
from flowsteer.methods.pretrain import CFMObjective
from flowsteer.models import build_model, default_model_spec
from flowsteer.paths import LinearPath, TimeSampler
from flowsteer.config import TrainConfig
from flowsteer.training import Trainer


class BareLoop:
    """The same training step written by hand with plain PyTorch."""

    def __init__(self, model, x, cfg: TrainConfig) -> None:
        self.model, self.x, self.cfg = model, x, cfg
        self.g = torch.Generator().manual_seed(0)
        self.params = list(model.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.ema = [p.detach().clone() for p in self.params]
        self.k = 0
        model.train()

    def run(self, steps: int) -> None:
        cfg, model, g = self.cfg, self.model, self.g
        for _ in range(steps):
            k = self.k
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps)
            idx = torch.randint(0, self.x.shape[0], (cfg.batch_size,), generator=g)
            x1 = self.x[idx]
            x0 = torch.randn(x1.shape, generator=g)
            t = torch.rand(cfg.batch_size, generator=g)
            tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
            x_t = (1 - tt) * x0 + tt * x1
            loss = ((model(t, x_t) - (x1 - x0)) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self.params, 1 - min(cfg.ema_decay, (1 + k) / (10 + k)))
            self.k += 1


class FlowsteerLoop:
    """flowsteer's Trainer with the CFM objective, advanced in chunks."""

    def __init__(self, model, x, cfg: TrainConfig) -> None:
        objective = CFMObjective(x, path=LinearPath(), coupling=IndependentCoupling(), time_sampler=TimeSampler(),
                                 batch_size=cfg.batch_size)
        self.trainer = Trainer(model, objective, TrainConfig(**{**cfg.__dict__, "steps": 1}),
                               generator=torch.Generator().manual_seed(0))

    def run(self, steps: int) -> None:
        self.trainer.config.steps = self.trainer.step + steps
        self.trainer.fit()


def measure(spec, x, cfg, steps: int, chunk: int) -> tuple[float, float]:
    """Alternate chunks of both loops (so machine drift hits both); seconds per step of each."""
    torch.manual_seed(0)
    bare = BareLoop(build_model(spec), x, cfg)
    torch.manual_seed(0)
    ours = FlowsteerLoop(build_model(spec), x, cfg)
    bare.run(10)
    ours.run(10)  # warm-up
    spent = {"bare": 0.0, "ours": 0.0}
    for i in range(steps // chunk):
        order = (("bare", bare), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("bare", bare))
        for name, loop in order:
            start = time.perf_counter()
            loop.run(chunk)
            spent[name] += time.perf_counter() - start
    n = (steps // chunk) * chunk
    return spent["bare"] / n, spent["ours"] / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=20, help="steps per alternation between the two loops")
    args = ap.parse_args()
    data = load_data(args.data)
    x = data.normalizer.encode(data.train.x)
    spec = default_model_spec("auto", data.train.shape)
    cfg = TrainConfig()
    ratios = []
    for r in range(args.rounds):
        tb, to = measure(spec, x, cfg, args.steps, args.chunk)
        ratios.append(to / tb)
        print(f"round {r}: bare {tb * 1e3:.2f} ms/step, flowsteer {to * 1e3:.2f} ms/step, ratio {to / tb:.3f}")
    print(f"data={args.data} model={spec['kind']} batch={cfg.batch_size} threads={torch.get_num_threads()}")
    print(f"median ratio (flowsteer / bare) = {statistics.median(ratios):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
