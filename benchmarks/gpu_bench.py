"""GPU figures of flowsteer, each a ratio against a bare loop measured in the same run.

    python benchmarks/gpu_bench.py [--out runs/gpu_bench.json] [--smoke] [--sections pretrain,align,sample,memory]

Four sections, each guarded (a failure is printed and recorded in the JSON, the others still run); the JSON
is rewritten after every section, so a run cut short keeps what it measured:

  pretrain  steps/s of a CIFAR-size diffusers ``UNet2DModel`` (32x32, block_out_channels 128-256-256-256,
            2 layers per block, attention at 16x16; 35.7M parameters) at batch 128, bf16, wrapped as
            :class:`DiffusersUNet2DVelocity` and trained through flowsteer's Trainer + CFMObjective, against a
            bare hand-written bf16 loop of the same maths (same model init, fused Adam, linear warm-up,
            gradient clipping, EMA, batches drawn on the device).  After 10 warm-up steps each, the two
            alternate in chunks of 20 steps over 5 rounds with ``torch.cuda.synchronize()`` around each
            timed chunk; medians.
            Target: flowsteer / bare >= 0.95.
  align     one ORW-CFM-W2 step (rollouts included) on the same network at batch 128, bf16: the share of the
            step in the rollouts (lagged policy, Euler), the reward (negative mean brightness, a torch
            reward on the device), the loss forward, the reference pass and backward + optimiser.  Phases
            are cut at ``torch.cuda.synchronize()`` boundaries in an instrumented subclass of
            :class:`RewardWeightedObjective`; the remainder of the step is backward + optimiser.
  sample    samples/s of Euler sampling (50 steps, batch 128) through ``flowsteer.solvers.integrate`` and
            through ``Run.sample`` against a bare loop (fp32, inference mode; rotated order over rounds).
            Target: flowsteer / bare >= 0.95.
  memory    peak GPU memory (``max_memory_allocated``) of an SD3-style transformer (``SD3Transformer2DModel``,
            hidden 1152, 18 heads, 4 layers, 187M parameters; 64x64x16 latents, 154 prompt tokens, batch 8)
            with rank-16 LoRA: a bare hand-written LoRA CFM step, flowsteer's Trainer on the same plain CFM
            step, and a flowsteer ORW-CFM-W2 align step (lagged-policy rollouts with swapped adapters, reward,
            reference = the same network with its adapters disabled).  3 steps each, bf16.
            Target: align / bare <= 1.15.

``--smoke``: tiny sizes, runs anywhere (CPU included) in well under a minute, to prove the script works; its
figures mean nothing.  On a CPU the memory section runs its steps but reports no peak.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_bench.py` from a checkout, without installing
    sys.path.insert(0, str(ROOT))

from flowsteer.config import TrainConfig  # noqa: E402
from flowsteer.couplings import IndependentCoupling  # noqa: E402
from flowsteer.methods.configs import AlignConfig  # noqa: E402
from flowsteer.methods.orw import RewardWeightedObjective  # noqa: E402
from flowsteer.methods.pretrain import CFMObjective  # noqa: E402
from flowsteer.models.adapters import DiffusersUNet2DVelocity, SD3Velocity  # noqa: E402
from flowsteer.models.lora import AdapterDisabled, add_lora, lora_spec  # noqa: E402
from flowsteer.paths import LinearPath, TimeSampler  # noqa: E402
from flowsteer.runs import Run  # noqa: E402
from flowsteer.solvers import integrate  # noqa: E402
from flowsteer.training import StepOutput, Trainer  # noqa: E402

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- sizes

def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "unet": dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                         up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                         norm_num_groups=8, attention_head_dim=8),
            "shape": (3, 8, 8), "n_data": 64, "batch": 8,
            "warmup": 1, "chunk": 2, "rounds": 2,
            "align_batch": 8, "rollout_steps": 2, "align_warmup": 1, "align_steps": 1,
            "sample_batch": 8, "sample_steps": 5, "sample_rounds": 2,
            "sd3": dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                        pooled_projection_dim=32, pos_embed_max_size=8),
            "sd3_tokens": 7, "sd3_batch": 2, "sd3_rank": 4, "sd3_rollout_steps": 2, "sd3_steps": 2,
        }
    return {
        # DDPM's CIFAR-10 network in diffusers' UNet2DModel: 35.7M parameters, attention at 16x16
        "unet": dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                     block_out_channels=(128, 256, 256, 256),
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                     attention_head_dim=64),
        "shape": (3, 32, 32), "n_data": 5000, "batch": 128,
        "warmup": 10, "chunk": 20, "rounds": 5,
        "align_batch": 128, "rollout_steps": 10, "align_warmup": 2, "align_steps": 8,
        "sample_batch": 128, "sample_steps": 50, "sample_rounds": 3,
        # SD3-medium's block at 3/4 width and 4 of its 24 layers: 187M parameters; 512 px images' latents
        "sd3": dict(sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=64,
                    num_attention_heads=18, joint_attention_dim=4096, caption_projection_dim=1152,
                    pooled_projection_dim=2048, pos_embed_max_size=64),
        "sd3_tokens": 154, "sd3_batch": 8, "sd3_rank": 16, "sd3_rollout_steps": 4, "sd3_steps": 3,
    }


# --------------------------------------------------------------------------- helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """Host time after every queued kernel has finished."""
    sync(device)
    return time.perf_counter()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_unet(cfg: dict[str, Any], device: torch.device, seed: int = 0) -> DiffusersUNet2DVelocity:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    with torch.device(device):
        return DiffusersUNet2DVelocity(UNet2DModel(**cfg))


def fake_images(n: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A stand-in training set in [-1, 1] (smooth random images), held on the device like CFMObjective's."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand((n, shape[0], 4, 4), generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=shape[1:], mode="bilinear", align_corners=False).to(device)


def train_config(s: dict[str, Any], precision: str, **over: Any) -> TrainConfig:
    base = TrainConfig(steps=1, batch_size=s["batch"], lr=2e-4, warmup_steps=100, grad_clip=1.0, ema_decay=0.9999,
                       log_every=100, precision=precision)
    return replace(base, **over)


# --------------------------------------------------------------------------- 1. pretrain step

class BarePretrain:
    """The CFM step written by hand: batch on the device, bf16 autocast, fused Adam, warm-up, clip, EMA."""

    def __init__(self, model: nn.Module, x: Tensor, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.x, self.cfg, self.device = model, x, cfg, device
        self.g = torch.Generator(device=device).manual_seed(0)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, fused=device.type in ("cuda", "cpu"))
        self.ema = [p.detach().clone() for p in self.params]
        self.k = 0
        model.train()

    def run(self, steps: int) -> None:
        cfg, model, g, x, dev = self.cfg, self.model, self.g, self.x, self.device
        b = cfg.batch_size
        for _ in range(steps):
            k = self.k
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps)
            idx = torch.randint(0, x.shape[0], (b,), generator=g, device=dev)
            x1 = x[idx]
            x0 = torch.randn(x1.shape, generator=g, device=dev)
            t = torch.rand(b, generator=g, device=dev)
            tt = t.view(-1, *([1] * (x1.dim() - 1)))
            x_t = (1 - tt) * x0 + tt * x1
            with autocast(dev, cfg.precision):
                pred = model(t, x_t).float()
            loss = ((pred - (x1 - x0)) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self.params, 1.0 - min(cfg.ema_decay, (1 + k) / (10 + k)))
            self.k += 1


class FlowsteerPretrain:
    """flowsteer's Trainer with CFMObjective, advanced in chunks (as benchmarks/bench_pretrain_step.py)."""

    def __init__(self, model: nn.Module, x: Tensor, cfg: TrainConfig, device: torch.device) -> None:
        objective = CFMObjective(x, path=LinearPath(), coupling=IndependentCoupling(), time_sampler=TimeSampler(),
                                 batch_size=cfg.batch_size)
        self.trainer = Trainer(model, objective, replace(cfg, steps=1),
                               generator=torch.Generator(device=device).manual_seed(0))

    def run(self, steps: int) -> None:
        self.trainer.config.steps = self.trainer.step + steps
        self.trainer.fit()


def section_pretrain(s: dict[str, Any], device: torch.device, precision: str) -> dict[str, Any]:
    x = fake_images(s["n_data"], s["shape"], device)
    cfg = train_config(s, precision)
    bare_model = build_unet(s["unet"], device)
    ours_model = copy.deepcopy(bare_model)
    loops = {"bare": BarePretrain(bare_model, x, cfg, device), "flowsteer": FlowsteerPretrain(ours_model, x, cfg, device)}
    for loop in loops.values():  # warm-up: allocations, kernel selection, Adam's state
        loop.run(s["warmup"])
    sync(device)
    rounds = []
    for r in range(s["rounds"]):
        order = ["bare", "flowsteer"] if r % 2 == 0 else ["flowsteer", "bare"]
        sps = {}
        for name in order:
            start = now(device)
            loops[name].run(s["chunk"])
            sps[name] = s["chunk"] / (now(device) - start)
        rounds.append({**sps, "ratio": sps["flowsteer"] / sps["bare"]})
        print(f"  round {r}: bare {sps['bare']:.2f} steps/s, flowsteer {sps['flowsteer']:.2f} steps/s, "
              f"ratio {sps['flowsteer'] / sps['bare']:.3f}", flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in ("bare", "flowsteer", "ratio")}
    print(f"  pretrain: bare {med['bare']:.2f} steps/s, flowsteer {med['flowsteer']:.2f} steps/s, "
          f"median ratio flowsteer/bare = {med['ratio']:.3f} (target >= 0.95)", flush=True)
    return {"parameters": n_params(bare_model), "batch": cfg.batch_size, "precision": precision,
            "steps_per_round": s["chunk"], "rounds": rounds, "bare_steps_per_s": med["bare"],
            "flowsteer_steps_per_s": med["flowsteer"], "ratio": med["ratio"], "target": ">= 0.95",
            "meets_target": med["ratio"] >= 0.95}


# --------------------------------------------------------------------------- 2. align step phases

class PhaseTimer:
    def __init__(self, device: torch.device) -> None:
        self.device, self.total, self.on = device, {}, False

    def add(self, key: str, seconds: float) -> None:
        if self.on:
            self.total[key] = self.total.get(key, 0.0) + seconds


class TimedCall:
    """A callable standing in for the reference network that times each call between synchronisations."""

    def __init__(self, net: Callable[..., Tensor], timer: PhaseTimer, key: str) -> None:
        self.net, self.timer, self.key = net, timer, key

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        start = now(self.timer.device)
        out = self.net(*args, **kwargs)
        self.timer.add(self.key, now(self.timer.device) - start)
        return out


class TimedObjective(RewardWeightedObjective):
    """ORW-CFM-W2 with its phases cut at synchronisations: next_batch (policy refresh, rollout, reward),
    the reward alone, the whole loss() call; the reference is wrapped in :class:`TimedCall` after init."""

    timer: PhaseTimer

    def next_batch(self, model, step, generator):
        start = now(self.timer.device)
        out = super().next_batch(model, step, generator)
        self.timer.add("next_batch", now(self.timer.device) - start)
        return out

    def _score(self, x1, cond, step):
        start = now(self.timer.device)
        out = super()._score(x1, cond, step)
        self.timer.add("reward", now(self.timer.device) - start)
        return out

    def loss(self, model, *, step, generator):
        start = now(self.timer.device)
        out = super().loss(model, step=step, generator=generator)
        self.timer.add("loss_call", now(self.timer.device) - start)
        return out


def brightness_reward(x: Tensor, **_: Any) -> Tensor:
    """Negative mean brightness: one reduction on the device."""
    return -x.float().flatten(1).mean(1)


def section_align(s: dict[str, Any], device: torch.device, precision: str) -> dict[str, Any]:
    train = train_config(s, precision, batch_size=s["align_batch"], warmup_steps=10, ema_decay=0.0, log_every=50)
    cfg = AlignConfig(base="(benchmark)", reward=brightness_reward, method="orw-w2", rollout_steps=s["rollout_steps"],
                      rollout_solver="euler", refresh_every=50, train=train)
    model = build_unet(s["unet"], device)
    reference = copy.deepcopy(model).eval()  # full fine-tuning: the frozen base
    timer = PhaseTimer(device)
    generator = torch.Generator(device=device).manual_seed(0)
    objective = TimedObjective(reference=reference, reward=brightness_reward, config=cfg, decode=lambda z: z,
                               shape=s["shape"], sigma=0.0, generator=generator, device=device)
    objective.timer = timer
    objective.reference = TimedCall(objective.reference, timer, "reference")
    trainer = Trainer(model, objective, replace(train, steps=s["align_warmup"]), generator=generator)
    trainer.fit()  # warm-up (makes the lagged policy)
    timer.on = True
    n = s["align_steps"]
    trainer.config.steps = trainer.step + n
    start = now(device)
    trainer.fit()
    total = now(device) - start
    t = {k: v / n for k, v in timer.total.items()}
    step = total / n
    rollout = t["next_batch"] - t["reward"]
    forward = t["loss_call"] - t["next_batch"] - t["reference"]
    backward = step - t["loss_call"]
    phases = {"rollout": rollout, "reward": t["reward"], "loss_forward": forward, "reference": t["reference"],
              "backward_and_optimizer": backward}
    shares = {k: v / step for k, v in phases.items()}
    shares["loss_forward_and_backward"] = shares["loss_forward"] + shares["backward_and_optimizer"]
    print(f"  align step: {step * 1e3:.1f} ms ({1 / step:.2f} steps/s), batch {train.batch_size}, "
          f"{s['rollout_steps']} rollout steps", flush=True)
    for k, v in shares.items():
        print(f"    {k:<26} {v * 100:5.1f} %", flush=True)
    return {"batch": train.batch_size, "rollout_steps": s["rollout_steps"], "precision": precision,
            "step_ms": step * 1e3, "steps_per_s": 1 / step, "phase_ms": {k: v * 1e3 for k, v in phases.items()},
            "shares": shares, "reward": "negative mean brightness (torch, on the device)",
            "note": "phases cut at torch.cuda.synchronize(); backward_and_optimizer = step - loss() call"}


# --------------------------------------------------------------------------- 3. sampling

@torch.inference_mode()
def bare_euler(model: nn.Module, x0: Tensor, steps: int) -> Tensor:
    h = 1.0 / steps
    times = torch.arange(steps, device=x0.device, dtype=x0.dtype) * h
    ones = torch.ones(x0.shape[0], device=x0.device, dtype=x0.dtype)
    x = x0
    for k in range(steps):
        x = x + h * model(times[k] * ones, x)
    return x


def section_sample(s: dict[str, Any], device: torch.device) -> dict[str, Any]:
    model = build_unet(s["unet"], device).eval()
    n, steps = s["sample_batch"], s["sample_steps"]
    shape = tuple(s["shape"])
    run = Run(model=model, config={"data": {"shape": list(shape), "normalizer": {"mean": [0.0], "std": [1.0]}},
                                   "path": {"sigma": 0.0}, "model": {"num_classes": 0}})
    x0 = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    fns = {
        "bare": lambda: bare_euler(model, x0, steps),
        "integrate": lambda: integrate(model, x0, solver="euler", steps=steps).x,
        "run_sample": lambda: run.sample(n, solver="euler", steps=steps, seed=0, decode=False).x,
    }
    outs = {k: f() for k, f in fns.items()}  # warm-up, and the three agree
    agree = {k: float((outs[k] - outs["bare"]).abs().max()) for k in ("integrate", "run_sample")}
    names = list(fns)
    rounds = []
    for r in range(s["sample_rounds"]):
        order = names[r % 3:] + names[:r % 3]
        sps = {}
        for name in order:
            start = now(device)
            fns[name]()
            sps[name] = n / (now(device) - start)
        rounds.append(sps)
    med = {k: statistics.median(r[k] for r in rounds) for k in names}
    ratios = {k: med[k] / med["bare"] for k in ("integrate", "run_sample")}
    print(f"  sampling (euler, {steps} steps, batch {n}): bare {med['bare']:.1f} samples/s, integrate "
          f"{med['integrate']:.1f} (ratio {ratios['integrate']:.3f}), Run.sample {med['run_sample']:.1f} "
          f"(ratio {ratios['run_sample']:.3f}); target >= 0.95", flush=True)
    return {"solver": "euler", "steps": steps, "batch": n, "dtype": "float32 (no autocast, as Run.sample)",
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "rounds": rounds,
            "samples_per_s": med, "ratio_integrate": ratios["integrate"], "ratio_run_sample": ratios["run_sample"],
            "max_abs_difference_to_bare": agree, "target": ">= 0.95",
            "meets_target": min(ratios.values()) >= 0.95}


# --------------------------------------------------------------------------- 4. LoRA memory

def section_memory(s: dict[str, Any], device: torch.device, precision: str) -> dict[str, Any]:
    from diffusers import SD3Transformer2DModel

    cfg = s["sd3"]
    torch.manual_seed(0)
    with torch.device(device):
        model = SD3Velocity(SD3Transformer2DModel(**cfg))
    params = n_params(model)
    add_lora(model, lora_spec(model, rank=s["sd3_rank"]))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    b, shape = s["sd3_batch"], (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    g = torch.Generator(device=device).manual_seed(0)
    prompt = {"encoder_hidden_states": torch.randn((1, s["sd3_tokens"], cfg["joint_attention_dim"]), generator=g,
                                                   device=device),
              "pooled_projections": torch.randn((1, cfg["pooled_projection_dim"]), generator=g, device=device)}

    def condition(n: int) -> dict[str, Tensor]:
        return {k: v.expand(n, *v.shape[1:]) for k, v in prompt.items()}

    x1 = torch.randn((b, *shape), generator=g, device=device)
    train = TrainConfig(steps=s["sd3_steps"], batch_size=b, lr=1e-4, warmup_steps=0, grad_clip=1.0, ema_decay=0.0,
                        log_every=1, precision=precision)

    def bare() -> None:
        lora = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(lora, lr=train.lr, fused=device.type in ("cuda", "cpu"))
        gen = torch.Generator(device=device).manual_seed(1)
        for _ in range(train.steps):
            x0 = torch.randn(x1.shape, generator=gen, device=device)
            t = torch.rand(b, generator=gen, device=device)
            tb = t.view(-1, 1, 1, 1)
            with autocast(device, precision):
                pred = model(t, (1 - tb) * x0 + tb * x1, **condition(b)).float()
            loss = ((pred - (x1 - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora, train.grad_clip)
            opt.step()
        sync(device)

    class PlainCFM:
        def loss(self, net, *, step, generator):
            x0 = torch.randn(x1.shape, generator=generator, device=device)
            t = torch.rand(b, generator=generator, device=device)
            tb = t.view(-1, 1, 1, 1)
            pred = net(t, (1 - tb) * x0 + tb * x1, **condition(b)).float()
            return StepOutput(loss=((pred - (x1 - x0)) ** 2).mean())

    def flowsteer_plain() -> None:
        Trainer(model, PlainCFM(), train, generator=torch.Generator(device=device).manual_seed(1)).fit()
        sync(device)

    def flowsteer_align() -> None:
        gen = torch.Generator(device=device).manual_seed(1)
        config = AlignConfig(base="(benchmark)", reward=brightness_reward, rollout_steps=s["sd3_rollout_steps"],
                             refresh_every=2, train=train)
        objective = RewardWeightedObjective(reference=AdapterDisabled(model), reward=brightness_reward, config=config,
                                            decode=lambda z: z, shape=shape, sigma=0.0, generator=gen,
                                            condition=condition, device=device)
        Trainer(model, objective, train, generator=gen).fit()
        sync(device)

    cuda = device.type == "cuda"
    results: dict[str, Any] = {}
    for name, fn in (("bare_lora_plain", bare), ("flowsteer_lora_plain", flowsteer_plain),
                     ("flowsteer_lora_align", flowsteer_align)):
        for p in model.parameters():  # the previous mode's gradients must not count in this one
            p.grad = None
        free(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if cuda else None
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        results[name] = {"peak_mib": peak / 2**20 if cuda else None,
                         "above_weights_mib": (peak - before) / 2**20 if cuda else None,
                         "weights_mib": before / 2**20 if cuda else None, "seconds": seconds}
        if cuda:
            print(f"  {name:<21} peak {peak / 2**20:9.0f} MiB (weights {before / 2**20:7.0f} MiB, step working set "
                  f"{(peak - before) / 2**20:8.0f} MiB)  {seconds:.1f} s", flush=True)
        else:
            print(f"  {name:<21} ran ({seconds:.1f} s); no peak on {device.type}", flush=True)
    out: dict[str, Any] = {"parameters": params, "trainable": trainable, "lora_rank": s["sd3_rank"], "batch": b,
                           "latent_shape": list(shape), "prompt_tokens": s["sd3_tokens"], "precision": precision,
                           "steps": train.steps, "rollout_steps": s["sd3_rollout_steps"], "modes": results,
                           "target": "<= 1.15"}
    if cuda:
        bare_peak = results["bare_lora_plain"]["peak_mib"]
        out["ratio"] = results["flowsteer_lora_align"]["peak_mib"] / bare_peak
        out["ratio_plain"] = results["flowsteer_lora_plain"]["peak_mib"] / bare_peak
        out["meets_target"] = out["ratio"] <= 1.15
        print(f"  peak memory: flowsteer LoRA align / bare LoRA step = {out['ratio']:.3f} (target <= 1.15); "
              f"flowsteer plain / bare = {out['ratio_plain']:.3f}", flush=True)
    return out


# --------------------------------------------------------------------------- main

SECTIONS = ("pretrain", "align", "sample", "memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu_bench.json", help="where to write the JSON")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device: proves the script runs")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--precision", default=None, choices=("bf16", "fp16", "fp32"),
                    help="autocast of the training steps (default: bf16 on CUDA, fp16 where it has no bf16; "
                         "fp32 on a CPU)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
    s = sizes(args.smoke)
    wanted = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()})"
    report: dict[str, Any] = {
        "device": name,
        "device_type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers": diffusers_version, "python": platform.python_version(), "smoke": args.smoke,
        "precision": precision, "threads": torch.get_num_threads(), "sections": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu_bench on {report['device']} (torch {torch.__version__}, diffusers {diffusers_version}, "
          f"precision {precision}{', smoke' if args.smoke else ''})", flush=True)
    t_all = time.perf_counter()
    runners = {"pretrain": lambda: section_pretrain(s, device, precision),
               "align": lambda: section_align(s, device, precision),
               "sample": lambda: section_sample(s, device),
               "memory": lambda: section_memory(s, device, precision)}
    for name in wanted:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        try:
            result = runners[name]()
        except Exception as exc:  # one failing section must not stop the others
            tb = traceback.format_exc()
            print(f"  FAILED: {type(exc).__name__}: {exc}\n{tb}", flush=True)
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb.splitlines()[-30:]}
        result["seconds"] = round(time.perf_counter() - start, 2)
        report["sections"][name] = result
        report["seconds"] = round(time.perf_counter() - t_all, 2)
        out.write_text(json.dumps(report, indent=2, default=str))
        free(device)
        print(f"  ({result['seconds']:.1f} s)", flush=True)
    failed = [k for k, v in report["sections"].items() if "error" in v]
    print(f"wrote {out} in {report['seconds']:.1f} s" + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
