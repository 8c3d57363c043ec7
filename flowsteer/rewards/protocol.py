"""The reward protocol, and the one guarded call every reward goes through (:func:`score`).

A reward is untrusted code.  :func:`score` (and :func:`classify` for a reward's ``classify``) therefore

* passes a copy of the samples and conditions: a reward that edits its input in place cannot touch
  training or metrics;
* sends what the reward prints to stderr (Python's ``sys.stdout`` and file descriptor 1, so a child
  process's output too): stdout may carry machine output (``flowsteer evaluate --json -``);
* restores torch's grad mode and default dtype if the reward changed them;
* turns every way a reward can fail into one :class:`RewardError` line naming the reward: it raised, called
  ``sys.exit()``, took longer than ``--reward-timeout``, returned ``None``, something not numeric, complex
  numbers, the wrong shape, a tensor on the meta device (or one that cannot be moved to the samples'
  device), or finite values beyond float32's range (e.g. float64 ``1e300``).  A tensor on another real
  device is moved to the samples' device.  ``KeyboardInterrupt`` is never caught;
* is an interruptible region (:mod:`flowsteer.interrupts`): a stop signal during a slow reward cuts the
  call short.

NaN and inf are returned as they are: what to do with them is the caller's choice (align stops or skips).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import FlowsteerError, TrainingStopped
from ..interrupts import interruptible

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its newlines folded), cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        with interruptible():
            return fn()

    def alarm(_signum, _frame):
        raise _RewardTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout))
    try:
        with interruptible():  # around the call only: a stop signal never lands in the clean-up below
            return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _copy(x: Tensor, cond: dict[str, Any] | None) -> tuple[Tensor, dict[str, Any]]:
    """The samples and conditions a reward sees: copies, so that in-place edits stay with the reward."""
    return x.detach().clone(), {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in (cond or {}).items()}


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Around a reward's code (its call, its module's import): its prints go to stderr (Python level and file
    descriptor 1), and torch's grad mode and default dtype come back as they were."""
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    saved_fd = None
    try:
        sys.stdout.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):  # no file descriptors (an embedded stdout): Python level only
        if saved_fd is not None:
            os.close(saved_fd)
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        torch.set_grad_enabled(grad)
        if torch.get_default_dtype() != dtype:
            torch.set_default_dtype(dtype)


@contextlib.contextmanager
def as_reward_errors(on_exit: Callable[[SystemExit], str], on_error: Callable[[Exception], str], *,
                     chain: bool = False) -> Iterator[None]:
    """User code's failures inside the block as one :class:`RewardError` line: ``on_exit`` words a
    ``sys.exit()``, ``on_error`` any other exception (kept as the cause when ``chain``); a RewardError and a
    KeyboardInterrupt pass through."""
    try:
        yield
    except RewardError:
        raise
    except SystemExit as exc:
        raise RewardError(on_exit(exc)) from None
    except Exception as exc:
        raise RewardError(on_error(exc)) from (exc if chain else None)


def _call(reward: Any, name: str, fn, *, timeout: float | None, n: int, step: int | None, what: str = "") -> Any:
    """``fn()`` (the reward's call) under :func:`guarded`, its failures turned into one RewardError line."""
    with as_reward_errors(lambda exc: f"reward {name!r}{what} called sys.exit({exc.code!r}); a reward must return its "
                                      "values - raise an exception to report a problem",
                          lambda exc: f"reward {name!r}{what} raised {type(exc).__name__}: {one_line(exc)}{_origin(exc)}",
                          chain=True):
        try:
            with guarded():
                return _call_with_timeout(fn, timeout)
        except _RewardTimeout:
            at = f" at step {step}" if step is not None else ""
            raise RewardError(f"reward {name!r}{what} took longer than --reward-timeout {timeout:g} s on {n} samples"
                              f"{at}; speed the reward up or raise --reward-timeout") from None


def _numbers(out: Any, name: str, n: int, device: torch.device, what: str = "") -> Tensor:
    """A reward's result as ``[n]`` numbers on ``device`` (float64 on the host, or the tensor as it came)."""
    need = f"it must return one number per sample, {n} in all (a tensor, numpy array or list of shape ({n},))"
    label = f"reward {name!r}{what}"
    if out is None:
        raise RewardError(f"{label} returned None; {need} - is its return statement missing?")
    if isinstance(out, Tensor):
        if out.device.type == "meta":
            raise RewardError(f"{label} returned a tensor on the meta device, which holds no values; {need}")
        values = out.detach()
        if values.layout != torch.strided:
            raise RewardError(f"{label} returned a {values.layout} tensor; {need} (a dense tensor)")
        try:
            values = values.to(device)
        except Exception as exc:  # noqa: BLE001 - an unusable device is the reward's problem, said in one line
            raise RewardError(f"{label} returned a tensor on {out.device} that cannot be moved to the samples' device "
                              f"{device} ({type(exc).__name__}); return it on {device} or as a numpy array") from None
    else:
        try:
            values = np.asarray(out) if not isinstance(out, (str, bytes, dict, set)) else None
        except Exception:  # noqa: BLE001 - ragged lists and the like
            values = None
        if values is not None and values.dtype == object:
            try:
                values = values.astype(np.float64)
            except OverflowError:  # whole numbers beyond float64
                raise RewardError(f"{label} returned numbers beyond float32's range (+-3.4e38); scale the reward "
                                  "down (divide it by a constant) or clip it") from None
            except Exception:  # noqa: BLE001
                values = None
        if values is None or values.dtype.kind not in "biufc":
            raise RewardError(f"{label} returned {type(out).__name__}, not numbers; {need}")
    if values.is_complex() if isinstance(values, Tensor) else values.dtype.kind == "c":
        raise RewardError(f"{label} returned complex numbers; {need} (real ones)")
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.ndim != 1 or values.shape[0] != n:
        raise RewardError(f"{label} returned shape {tuple(values.shape)} for {n} samples; {need}")
    return values


def _to_float32(values: Any, name: str, device: torch.device, what: str = "") -> Tensor:
    """float32 rewards; finite values that float32 cannot hold are an error (they would turn into inf)."""
    if isinstance(values, Tensor):
        r = values.to(torch.float32)
        wide = values.is_floating_point() and torch.finfo(values.dtype).max > FLOAT32_MAX
        big = (torch.isfinite(values) & ~torch.isfinite(r)).any() if wide else None
        over = bool(big) if big is not None else False  # one sync, only for float64 results
        top = float(values[torch.isfinite(values)].abs().max()) if over else 0.0
    else:
        with np.errstate(over="ignore"):
            wide = np.asarray(values, dtype=np.float64) if values.dtype.kind != "f" else values
            r32 = wide.astype(np.float32)
        finite = np.isfinite(wide)
        over = bool((finite & ~np.isfinite(r32)).any())
        top = float(np.abs(wide[finite]).max()) if over else 0.0
        r = torch.from_numpy(np.ascontiguousarray(r32)).to(device)
    if over:
        raise RewardError(f"reward {name!r}{what} returned values up to {top:.3g}, beyond float32's range (+-3.4e38); "
                          "scale the reward down (divide it by a constant) or clip it")
    return r


def nonfinite_error(reward: Any, bad: int, n: int, *, step: int | None = None, skip_option: bool = True) -> RewardError:
    """The one message for NaN / inf rewards (``bad`` of ``n``); ``skip_option``: the command has --on-bad-reward."""
    at = f" at step {step}" if step is not None else ""
    if bad < n:
        return RewardError(f"reward {reward_name(reward)!r} returned NaN or inf for {bad} of {n} samples{at}; fix the "
                           "reward, or pass --on-bad-reward skip to drop such samples")
    fix = "; fix the reward (--on-bad-reward skip drops some samples of a batch, never all)" if skip_option else \
        "; fix the reward"
    return RewardError(f"reward {reward_name(reward)!r} returned NaN or inf for all {n} samples{at}{fix}")


def finite_rewards(reward: Any, r: Tensor, x: Tensor, *, step: int, skip: bool) -> tuple[Tensor, int]:
    """The validity mask of rewards ``r`` (``[B]``) of samples ``x`` and how many are NaN or inf (one host read).

    NaN/inf rewards raise the usual message unless ``skip`` (``--on-bad-reward skip``), and always when every
    sample's is.  Samples that are NaN or inf themselves mean the model diverged: TrainingStopped (exit 3),
    not the reward's fault.
    """
    valid = torch.isfinite(r)
    n_bad = int((~valid).sum())
    if n_bad:
        broken = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        if broken:
            raise TrainingStopped(f"stopped at step {step}: {broken} of {x.shape[0]} samples of the policy are NaN or "
                                  "inf - training diverged; the last checkpoint is kept - lower --lr (or raise --alpha)")
        if not skip or n_bad == r.numel():
            raise nonfinite_error(reward, n_bad, r.numel(), step=step)
    return valid, n_bad


def score(reward: Any, x: Tensor, cond: dict[str, Tensor] | None = None, *, timeout: float | None = None,
          step: int | None = None) -> Tensor:
    """Call ``reward`` on a copy of ``x`` and return a float32 tensor ``[B]`` on ``x``'s device (may hold NaN/inf).

    Args:
        timeout: seconds the call may take (None = no limit).  step: named in the timeout message.

    Raises:
        RewardError: the reward misbehaved (see the module doc); one line naming the reward.
    """
    name = reward_name(reward)
    sample, conditions = _copy(x, cond)
    out = _call(reward, name, lambda: reward(sample, **conditions) if conditions else reward(sample),
                timeout=timeout, n=x.shape[0], step=step)
    return _to_float32(_numbers(out, name, x.shape[0], x.device), name, x.device)


def classify(reward: Any, x: Tensor, *, timeout: float | None = None) -> Tensor | None:
    """A reward's ``classify(x)`` on a copy of ``x``, guarded like :func:`score`: class indices ``[B]`` (long,
    in ``[0, num_classes)``), or None when the reward has no ``classify``."""
    fn = getattr(reward, "classify", None)
    if not callable(fn):
        return None
    name, what = reward_name(reward), "'s classify"
    sample, _ = _copy(x, None)
    out = _call(reward, name, lambda: fn(sample), timeout=timeout, n=x.shape[0], step=None, what=what)
    values = _numbers(out, name, x.shape[0], x.device, what)
    labels = torch.as_tensor(values).to(x.device) if not isinstance(values, Tensor) else values
    k = num_classes(reward)
    if labels.is_floating_point() and not bool((labels == labels.round()).all()) or \
            labels.numel() and not bool(((labels >= 0) & (labels < k)).all()):
        raise RewardError(f"reward {name!r}{what} returned values outside the class indices 0..{k - 1}; it must "
                          "return one whole class index per sample")
    return labels.long()


def num_classes(reward: Any) -> int:
    """A classifying reward's class count (``num_classes``, default 10), checked to be a whole number >= 1."""
    value = getattr(reward, "num_classes", 10)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RewardError(f"reward {reward_name(reward)!r} has num_classes = {value!r}; it must be a whole number >= 1")
    return int(value)
