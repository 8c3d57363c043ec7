"""Peak resident memory of an ORW-CFM-W2 align step with LoRA, against a plain LoRA training step.

    python benchmarks/memory_lora.py [--layers 5] [--batch 4] [--rank 16]

One random-weight SD3-style transformer (``SD3Transformer2DModel``, hidden 768, about 100M parameters by
default; built from its config, nothing downloaded) and, each in a fresh process so that the peak resident
set size (``ru_maxrss``) belongs to that mode alone:

  lora-plain   a plain conditional-flow-matching step of the LoRA model (Adam on the adapters)
  lora-align   an align step with LoRA: lagged-policy rollouts (adapter tensors swapped in), the reward,
               and the reference velocity from the same network with its adapters disabled
  lora-align-copied-ref   control: the same with the reference as a deep copy of the network, to show
               what the figure would be if the reference were a second copy of the weights
  full-plain   a plain CFM step of every weight
  full-align   an align step of every weight (the reference and the lagged policy are copies)

All four run the shared Trainer for 3 steps (Adam's state exists after the first) on the same batch size,
latent shape and prompt-state shape.  Prints each peak and the ratio lora-align / lora-plain (target
<= 1.15), and full-align / lora-plain beside it.  Python's import overhead is in every figure alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("lora-plain", "lora-align", "lora-align-copied-ref", "full-plain", "full-align")


def transformer_config(layers: int) -> dict:
    return dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=64,
                num_attention_heads=12, joint_attention_dim=768, caption_projection_dim=768, pooled_projection_dim=768,
                pos_embed_max_size=16)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_mode(mode: str, layers: int, batch: int, rank: int) -> dict:
    import copy

    import torch
    from diffusers import SD3Transformer2DModel

    from flowsteer.config import TrainConfig
    from flowsteer.methods.orw import AlignConfig, RewardWeightedObjective
    from flowsteer.models.adapters import SD3Velocity
    from flowsteer.models.lora import AdapterDisabled, add_lora, lora_spec
    from flowsteer.training import StepOutput, Trainer, seed_everything

    torch.set_num_threads(2)
    generator = seed_everything(0)
    model = SD3Velocity(SD3Transformer2DModel(**transformer_config(layers)))
    n_params = sum(p.numel() for p in model.parameters())
    shape = (16, 16, 16)
    prompt = {"encoder_hidden_states": torch.randn(1, 77, 768), "pooled_projections": torch.randn(1, 768)}

    def condition(n):
        return {k: v.expand(n, *v.shape[1:]) for k, v in prompt.items()}

    lora = mode.startswith("lora")
    if lora:
        add_lora(model, lora_spec(model, rank=rank))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    after_build = peak_mib()
    train = TrainConfig(steps=3, batch_size=batch, lr=1e-4, warmup_steps=0, ema_decay=0.0, log_every=1)

    class PlainCFM:
        """x_t = t x1 + (1 - t) x0, target x1 - x0, on fixed random latents."""

        def __init__(self):
            self.x1 = torch.randn((batch, *shape), generator=generator)

        def loss(self, net, *, step, generator):
            x0 = torch.randn(self.x1.shape, generator=generator)
            t = torch.rand(batch, generator=generator)
            tb = t.view(-1, 1, 1, 1)
            pred = net(t, tb * self.x1 + (1 - tb) * x0, **condition(batch))
            return StepOutput(loss=((pred - (self.x1 - x0)) ** 2).mean())

    if mode.endswith("plain"):
        objective = PlainCFM()
    else:
        reference = AdapterDisabled(model) if mode == "lora-align" else copy.deepcopy(model).eval()
        config = AlignConfig(reward=lambda x, **_: -(x ** 2).flatten(1).mean(1), rollout_steps=2, refresh_every=2,
                             eval_samples=2, train=train)
        objective = RewardWeightedObjective(reference=reference, reward=config.reward, config=config,
                                            decode=lambda z: z, shape=shape, sigma=0.0, generator=generator,
                                            condition=condition)
    start = time.perf_counter()
    Trainer(model, objective, train, generator=generator).fit()
    return {"mode": mode, "parameters": n_params, "trainable": trainable, "peak_mib": peak_mib(),
            "after_build_mib": after_build, "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.layers, args.batch, args.rank)))
        return
    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--layers", str(args.layers), "--batch",
                              str(args.batch), "--rank", str(args.rank)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:<21} peak RSS {r['peak_mib']:8.0f} MiB  (after building {r['after_build_mib']:6.0f} MiB)  "
              f"trainable {r['trainable'] / 1e6:7.2f}M of {r['parameters'] / 1e6:.1f}M  {r['seconds']:.0f} s", flush=True)
    base = results["lora-plain"]["peak_mib"]
    ratio = results["lora-align"]["peak_mib"] / base
    print(f"lora-align / lora-plain = {ratio:.3f} (target <= 1.15); control lora-align-copied-ref / lora-plain = "
          f"{results['lora-align-copied-ref']['peak_mib'] / base:.3f}")
    print(f"full-align / lora-plain = {results['full-align']['peak_mib'] / base:.3f}; "
          f"full-plain / lora-plain = {results['full-plain']['peak_mib'] / base:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratio_lora_align_vs_plain": ratio}, indent=2))


if __name__ == "__main__":
    main()
