"""The reward protocol and the checks every reward result goes through."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import FlowsteerError


class RewardError(FlowsteerError):
    """A reward misbehaved: wrong length, non-finite values, or it raised."""


@runtime_checkable
class Reward(Protocol):
    """``reward(x, **cond) -> [B]`` numbers.  Optional extras:

    * ``name``: shown in messages and logs;
    * ``classify(x) -> [B]`` long and ``num_classes``: class histograms in the metrics.
    """

    def __call__(self, x: Tensor, **cond: Any) -> Any:
        ...


def reward_name(reward: Any) -> str:
    return str(getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__)))


def _origin(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    return f" at {last.tb_frame.f_code.co_filename}:{last.tb_lineno}"


class _RewardTimeout(BaseException):
    """Raised by SIGALRM inside a reward call (a BaseException, so the reward's own handlers let it through)."""


def _call_with_timeout(fn, timeout: float | None):
    """``fn()``, interrupted after ``timeout`` seconds (SIGALRM; main thread only, else no limit)."""
    import signal
    import threading

    if not timeout or threading.current_thread() is not threading.main_thread():
        return fn()

    def alarm(_signum, _frame):
        raise _RewardTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout))
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score(reward: Any, x: Tensor, cond: dict[str, Tensor] | None = None, *, timeout: float | None = None,
          step: int | None = None) -> Tensor:
    """Call ``reward`` on ``x`` and return a float32 tensor ``[B]`` (may contain non-finite values).

    Args:
        timeout: seconds the call may take (None = no limit).  step: named in the timeout message.

    Raises:
        RewardError: the reward raised (its own exception is shown), took longer than ``timeout``,
            or returned the wrong number of values or something not numeric.
    """
    name = reward_name(reward)
    try:
        sample = x.detach().clone()  # a copy: a reward that edits its input cannot touch training or metrics
        out = _call_with_timeout(lambda: reward(sample, **cond) if cond else reward(sample), timeout)
    except _RewardTimeout:
        at = f" at step {step}" if step is not None else ""
        raise RewardError(f"reward {name!r} took longer than --reward-timeout {timeout:g} s on {x.shape[0]} samples{at}; "
                          "speed the reward up or raise --reward-timeout") from None
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}{_origin(exc)}") from exc
    try:
        if isinstance(out, Tensor):
            if out.device.type == "meta":
                raise TypeError("a tensor on the meta device")
            r = out.detach().to(x.device, torch.float32)
        else:
            r = torch.from_numpy(np.asarray(out, dtype=np.float64)).to(x.device, torch.float32)
    except (TypeError, ValueError):
        raise RewardError(f"reward {name!r} returned {type(out).__name__}; it must return one number per sample") from None
    r = r.reshape(-1) if r.dim() == 2 and 1 in r.shape else r
    if r.dim() != 1 or r.shape[0] != x.shape[0]:
        raise RewardError(
            f"reward {name!r} returned shape {tuple(r.shape)} for {x.shape[0]} samples; it must return one number per sample"
        )
    return r
