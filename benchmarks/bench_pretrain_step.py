"""Pretraining loop overhead: flowsteer's Trainer vs a bare hand-written PyTorch loop.

Both loops do the same maths on the same model, batch and optimiser: draw a
minibatch of data, noise and times, build the linear path, MSE to the target,
backward, clip the gradient norm, Adam step with linear warm-up, EMA update.
They alternate in rounds within one process (the machine is shared and noisy:
absolute times drift, the ratio holds) and the script prints the median ratio.

    python benchmarks/bench_pretrain_step.py [--data digits] [--steps 300] [--rounds 5]

Target (issue 2): ratio <= 1.10.
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


def bare_loop(model, x, cfg: TrainConfig, steps: int) -> float:
    """The same training step written by hand; returns seconds per step."""
    g = torch.Generator().manual_seed(0)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    ema = [p.detach().clone() for p in model.state_dict().values()]
    model.train()
    start = time.perf_counter()
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps)
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g)
        x1 = x[idx]
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(cfg.batch_size, generator=g)
        tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
        x_t = (1 - tt) * x0 + tt * x1
        loss = ((model(t, x_t) - (x1 - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        d = min(cfg.ema_decay, (1 + k) / (10 + k))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.state_dict().values()], 1 - d)
    return (time.perf_counter() - start) / steps


def trainer_loop(model, x, cfg: TrainConfig, steps: int) -> float:
    cfg = TrainConfig(**{**cfg.__dict__, "steps": steps})
    objective = CFMObjective(x, path=LinearPath(), coupling=IndependentCoupling(), time_sampler=TimeSampler(),
                             batch_size=cfg.batch_size)
    trainer = Trainer(model, objective, cfg, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = load_data(args.data)
    x = data.normalizer.encode(data.train.x)
    spec = default_model_spec("auto", data.train.shape)
    cfg = TrainConfig()
    ratios, bare_times, ours = [], [], []
    for r in range(args.rounds):
        torch.manual_seed(r)
        m1 = build_model(spec)
        torch.manual_seed(r)
        m2 = build_model(spec)
        tb = bare_loop(m1, x, cfg, args.steps)
        to = trainer_loop(m2, x, cfg, args.steps)
        bare_times.append(tb)
        ours.append(to)
        ratios.append(to / tb)
        print(f"round {r}: bare {tb * 1e3:.2f} ms/step, flowsteer {to * 1e3:.2f} ms/step, ratio {to / tb:.3f}")
    print(f"data={args.data} model={spec['kind']} batch={cfg.batch_size} threads={torch.get_num_threads()}")
    print(f"median ratio (flowsteer / bare) = {statistics.median(ratios):.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
