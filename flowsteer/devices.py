"""Where a run computes and in what precision: ``--device``, ``--precision``, ``--compile``.

* ``auto`` picks CUDA when it is available, else the CPU; ``cuda``, ``cuda:N``, ``mps`` and ``cpu`` are
  checked against what this machine has (one line and exit 2 if it has not).
* ``fp32`` trains in float32 and lets CUDA use TF32 matmuls (Ampere and newer); ``fp32-strict`` turns
  TF32 off; ``bf16`` and ``fp16`` autocast the forward passes (the master weights, the optimiser state and
  the EMA stay float32, and losses are computed in float32); ``fp16`` needs CUDA and adds a gradient scaler.
* The device is saved in a run's ``config.json`` but never needed to load it: weights are saved on the
  CPU, and ``load_run(..., device=...)`` places them anywhere.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``--device`` (``auto``: CUDA when available, else CPU), or a one-line error."""
    text = "auto" if spec is None else str(spec)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: this machine has no CUDA device (torch {torch.__version__}); "
                              "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {text}: Apple's MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise ConfigError(f"--device {text!r}: flowsteer runs on cpu, cuda or mps")
    return device


def precision_problems(device: torch.device, precision: str, *, compile: bool = False) -> list[str]:
    """Problems of ``--precision`` (and ``--compile``) on ``device``, one line each."""
    p = []
    if precision == "fp16" and device.type != "cuda":
        p.append(f"--precision fp16 needs a CUDA device (this run is on {device.type}, where autocast and the "
                 "gradient scaler are for bf16); use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        p.append("--precision bf16: this GPU has no bfloat16 support; use --precision fp16 or fp32")
    if compile and not compile_available():
        p.append(f"--compile: torch.compile is not available with torch {torch.__version__} on this Python; "
                 "drop --compile")
    return p


def compile_available() -> bool:
    if not hasattr(torch, "compile"):
        return False
    try:
        from torch import _dynamo

        return bool(_dynamo.is_dynamo_supported())
    except Exception:  # an unusual build without dynamo
        return False


def configure_matmul(device: torch.device, precision: str) -> None:
    """TF32 matmuls and convolutions on CUDA unless ``fp32-strict``."""
    if device.type == "cuda":
        allow = precision != "fp32-strict"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast the forward passes to ``bf16`` / ``fp16``; a no-op for ``fp32`` and ``fp32-strict``."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def cuda_rng_state() -> list[torch.Tensor] | None:
    """Every CUDA device's RNG state (None where CUDA was never initialised), for checkpoints."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_rng_state_all()
    return None
