"""Built-in rewards and the spec-string parser."""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..data import parse_classes
from .classifier import digit_labels, digit_probabilities
from .protocol import RewardError, as_reward_errors, guarded, one_line, reward_name, score

EVEN_DIGITS = (0, 2, 4, 6, 8)


class DigitClassReward:
    """``r(x) = sum_{c in classes} p(c | x)`` under the package's digit classifier (in [0, 1])."""

    num_classes = 10

    def __init__(self, classes: tuple[int, ...] = EVEN_DIGITS) -> None:
        self.classes = tuple(classes)
        self.name = f"digits:{','.join(map(str, self.classes))}"

    def __call__(self, x: Tensor, **_: Any) -> Tensor:
        if tuple(x.shape[1:]) not in ((1, 8, 8), (64,), (8, 8)):
            raise RewardError(f"reward {self.name!r} needs 8x8 digit images, but samples have shape {tuple(x.shape[1:])}")
        return digit_probabilities(x)[:, list(self.classes)].sum(dim=1)

    def classify(self, x: Tensor) -> Tensor:
        return digit_labels(x)


class JpegSizeReward:
    """DDPO's JPEG rewards: ``sign * size_kB(JPEG(x, quality=95))`` (sign = -1: compressibility)."""

    def __init__(self, sign: float = -1.0, quality: int = 95) -> None:
        self.sign, self.quality = float(sign), int(quality)
        self.name = "jpeg-compressibility" if sign < 0 else "jpeg-incompressibility"

    def __call__(self, x: Tensor, **_: Any) -> Tensor:
        from PIL import Image

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise RewardError(f"reward {self.name!r} needs images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        sizes = []
        for img in pixels:
            im = Image.fromarray(img[0]) if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000.0)
        return self.sign * torch.tensor(sizes, dtype=torch.float32, device=x.device)


class TargetReward:
    """``r(x) = -||x - a||^2`` (summed over coordinates) for a target point or image ``a``."""

    def __init__(self, target: Tensor, name: str) -> None:
        self.target = target.float()
        self.name = name

    def __call__(self, x: Tensor, **_: Any) -> Tensor:
        a = self.target
        if a.shape != x.shape[1:] and a.numel() != x[0].numel():
            raise RewardError(f"reward {self.name!r}: target has shape {tuple(a.shape)} but samples have {tuple(x.shape[1:])}")
        diff = x.reshape(x.shape[0], -1).float() - a.reshape(1, -1).to(x.device)
        return -(diff**2).sum(dim=1)


class WeightedSum:
    """``r(x) = sum_k c_k r_k(x)``."""

    def __init__(self, terms: list[tuple[float, Any]]) -> None:
        self.terms = terms
        self.name = "+".join(f"{c:g}*{reward_name(r)}" for c, r in terms)
        classifiers = [r for _, r in terms if hasattr(r, "classify")]
        if classifiers:
            self.classify = classifiers[0].classify
            self.num_classes = classifiers[0].num_classes

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        return sum(c * score(r, x, cond) for c, r in self.terms)


class UserReward:
    """Wraps a user function; passes conditions only if there are any."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name
        for attr in ("classify", "num_classes"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))

    def __call__(self, x: Tensor, **cond: Any) -> Any:
        return self.fn(x, **cond) if cond else self.fn(x)


def _load_python(spec: str) -> UserReward:
    body = spec[len("python:"):]
    where, sep, func = body.rpartition(":")
    if not sep or not where or not func:
        raise RewardError(f"cannot read reward {spec!r}; write python:MODULE:FUNCTION or python:FILE.py:FUNCTION")
    with as_reward_errors(lambda exc: f"importing {where!r} for reward {spec!r} called sys.exit({exc.code!r}); keep "
                                      "the module's top level free of exits (put the script part under if __name__ "
                                      "== '__main__':)",
                          lambda exc: f"cannot import {where!r} for reward {spec!r}: {type(exc).__name__}: "
                                      f"{one_line(exc)}"):
        with guarded():  # the module's own code is the user's too: its prints go to stderr
            if where.endswith(".py"):
                path = Path(where).expanduser()
                if not path.is_file():
                    raise RewardError(f"reward file {where!r} does not exist; check the path in {spec!r}")
                mod_name = f"flowsteer_user_reward_{abs(hash(str(path.resolve())))}"
                loader_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(loader_spec)  # type: ignore[arg-type]
                sys.modules[mod_name] = module
                loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                module = importlib.import_module(where)
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        raise RewardError(f"{where!r} has no function {func!r}; check the name in {spec!r}")
    return UserReward(fn, spec)


def _load_target(spec: str) -> TargetReward:
    arg = spec[len("target:"):]
    path = Path(arg).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise RewardError(f"target file {arg!r} does not exist; check the path in {spec!r}")
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise RewardError(f"cannot read target {arg!r} as a numpy array: {exc}") from None
        a = a[0] if a.ndim >= 2 and a.shape[0] == 1 else a
    else:
        try:
            a = np.array([float(v) for v in arg.split(",")])
        except ValueError:
            raise RewardError(f"cannot read target {arg!r}; give a .npy file or numbers like target:1.5,0") from None
    if not np.isfinite(a).all():
        raise RewardError(f"target {arg!r} contains NaN or inf")
    return TargetReward(torch.as_tensor(a, dtype=torch.float32, device="cpu"), spec)


def _single(spec: str) -> Any:
    spec = spec.strip()
    name, _, arg = spec.partition(":")
    if spec == "even-digits":
        return DigitClassReward(EVEN_DIGITS)
    if spec == "odd-digits":
        return DigitClassReward((1, 3, 5, 7, 9))
    if name == "digits":
        try:
            return DigitClassReward(parse_classes(arg))
        except Exception:
            raise RewardError(f"cannot read digit classes in {spec!r}; write digits:0,2,4,6,8") from None
    if spec in ("even-mnist", "odd-mnist", "even-mnist-judge"):
        from .mnist_classifier import MnistClassReward

        classes = EVEN_DIGITS if spec.startswith("even") else (1, 3, 5, 7, 9)
        return MnistClassReward(classes, name=spec, scorer="judge" if spec.endswith("judge") else "reward")
    if spec == "jpeg-compressibility":
        return JpegSizeReward(-1.0)
    if spec == "jpeg-incompressibility":
        return JpegSizeReward(+1.0)
    if name == "gaussian-modes":
        from .modes import ModeReward

        try:
            return ModeReward(parse_classes(arg))
        except Exception:
            raise RewardError(f"cannot read modes in {spec!r}; write gaussian-modes:0,3,5 (modes 0..7 of 8gaussians)") \
                from None
    if name == "target":
        return _load_target(spec)
    if name == "python":
        return _load_python(spec)
    if name == "clip":
        from .clip import parse_clip_spec

        return parse_clip_spec(arg)
    raise RewardError(
        f"unknown reward {spec!r}; use even-digits, digits:CLASSES, even-mnist, jpeg-compressibility, jpeg-incompressibility, "
        "gaussian-modes:0,3,5, target:FILE.npy, clip:PROMPT, python:MODULE:FUNCTION, or a weighted sum like "
        "0.5*even-digits+0.5*jpeg-compressibility"
    )


def build_reward(spec: str | Callable[..., Any]) -> Any:
    """A reward from a spec string (see :mod:`flowsteer.rewards`) or a callable (returned as is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError("empty reward spec; give one like even-digits")
    parts = [p for p in spec.split("+")]
    if len(parts) == 1 and "*" not in spec:
        return _single(spec)
    terms = []
    for part in parts:
        coef, star, rest = part.partition("*")
        if star:
            try:
                c = float(coef)
            except ValueError:
                raise RewardError(f"cannot read weight {coef!r} in reward {spec!r}; write it like 0.5*even-digits") from None
            terms.append((c, _single(rest)))
        else:
            terms.append((1.0, _single(part)))
    return WeightedSum(terms)
