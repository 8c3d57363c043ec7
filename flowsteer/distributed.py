"""Multi-process data parallelism through Hugging Face accelerate (``accelerate launch``).

The same code runs with no launcher (one process: every call here is a no-op) and under
``accelerate launch --num_processes N`` (or torchrun), which sets ``WORLD_SIZE`` > 1:

* the trained network is wrapped in DistributedDataParallel, so gradients are averaged across ranks in
  ``backward``; each rank draws ``batch_size / N`` samples of the global batch from its own generator
  (seed ``seed + rank``; rank 0's stream is the single-process one), so ranks roll out different samples;
* a step whose loss is not finite on any rank is skipped on every rank (a lone skip would hang the others);
* evaluation, logging and checkpoint writing happen on rank 0; every rank's RNG state is gathered into the
  checkpoint, so a resumed run continues each rank's stream; barriers keep ranks in step, and the process
  group's timeout (``FLOWSTEER_DIST_TIMEOUT`` seconds, default 300) bounds every wait, so a rank whose peer
  died exits with an error instead of hanging.

Requires the ``accelerate`` package only when launched with more than one process.  With CUDA each rank
trains on its own GPU (``accelerator.device``) and the ranks meet over NCCL; without it, over gloo on the
CPU.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass
class Distributed:
    """The process group as the trainer sees it: rank, world size and the few collectives it needs."""

    rank: int = 0
    world_size: int = 1
    accelerator: Any = None
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int) -> int:
        """This rank's share of the global batch (which must divide evenly)."""
        if global_batch % self.world_size:
            raise ConfigError(f"--batch-size {global_batch} does not split evenly over {self.world_size} processes; "
                              f"use a multiple of {self.world_size}")
        return global_batch // self.world_size

    def rank_seed(self, seed: int) -> int:
        return seed + self.rank

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (its parameters are broadcast from rank 0), or ``model``."""
        if not self.enabled:
            return model
        return self.accelerator.prepare_model(model)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out



def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (itself when not distributed), on its own device and without a host
    synchronisation; used for state every rank must share (ORW's dual variable)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = value.detach().clone()
    torch.distributed.all_reduce(t)
    return t / torch.distributed.get_world_size()


_CURRENT: Distributed | None = None


def setup() -> Distributed:
    """The current process group: one process, or accelerate's when launched with ``WORLD_SIZE`` > 1."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if world_size_from_env() <= 1:
        _CURRENT = Distributed()
        return _CURRENT
    try:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
    except ImportError:
        raise ConfigError("launched with several processes, which needs accelerate; install it with pip install "
                          "'flowsteer[distributed]'") from None
    timeout = float(os.environ.get("FLOWSTEER_DIST_TIMEOUT", "300"))
    # one GPU per rank over NCCL where CUDA exists; gloo on the CPU (accelerate's MULTI_CPU) otherwise
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout))])
    _CURRENT = Distributed(rank=accelerator.process_index, world_size=accelerator.num_processes, accelerator=accelerator,
                           device=accelerator.device)
    atexit.register(_destroy_process_group)
    return _CURRENT


def shutdown(*, together: bool = True) -> None:
    """End the process group: ``together`` (a command that finished on every rank) waits at a barrier first, so
    no rank tears its connections down while another still talks; then the wrappers that hold the group are
    collected and the group destroyed.  Without this, gloo's threads can outlive the interpreter, and a rank
    dies at exit with SIGABRT ("terminate called without an active exception", pytorch/pytorch #190489)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import gc

    try:
        if together:
            torch.distributed.barrier()
        gc.collect()  # DistributedDataParallel reducers in reference cycles hold the group
        torch.distributed.destroy_process_group()
    except Exception:  # a peer already gone: nothing left to tidy
        pass


def _destroy_process_group() -> None:
    """At exit (a command that raised, or library use): :func:`shutdown` without the barrier."""
    shutdown(together=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
