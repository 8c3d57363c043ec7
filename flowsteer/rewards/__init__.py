"""Rewards: any callable that scores a batch of samples with one finite number each.

A reward is called as ``reward(x, **cond)`` with samples ``x`` (``[B, *D]``, data
units) and the conditions the samples were generated with (e.g. ``y``); it
returns ``B`` numbers (a tensor, a numpy array or a list).  :func:`score`
checks and converts the result.

Built-ins are chosen by a spec string (see :func:`build_reward`)::

    digits:0,2,4,6,8        probability that the digit classifier puts x in those classes
    even-digits             alias of digits:0,2,4,6,8
    even-mnist              P(even) of 28x28 MNIST under a CNN trained once (odd-mnist; even-mnist-judge scores with
                            the independent judge classifier that measures every MNIST class histogram)
    jpeg-compressibility    minus the JPEG size in kB at quality 95 (DDPO's definition)
    jpeg-incompressibility  plus the JPEG size in kB
    gaussian-modes:0,3,5    a bump of height 1 on those modes of the 8gaussians toy (in [0, 1]; rewards.modes)
    target:FILE.npy         minus the squared distance to a target point or image
    target:1.5,0.0          the same with the point written inline
    clip:PROMPT[;contrast=TEXT][;model=DIR]   CLIP score of images (extra: clip; see rewards.clip)
    python:MODULE:FUNCTION  user code (importable module) ...
    python:FILE.py:FUNCTION ... or a file
    0.7*even-digits+0.3*jpeg-compressibility   a weighted sum
"""

from .protocol import Reward, RewardError, score
from .builtins import build_reward

__all__ = ["Reward", "RewardError", "build_reward", "score"]
