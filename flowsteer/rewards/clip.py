"""A CLIP text-image reward through transformers' ``CLIPModel`` / ``CLIPProcessor`` (extra: ``clip``).

With ``f`` the unit-normalised image embedding and ``g_p``, ``g_c`` those of the prompt and of a contrast
prompt::

    cosine       r(x) = cos(f(x), g_p)                                   (in [-1, 1]; CLIPScore / 100)
    probability  r(x) = exp(s cos(f, g_p)) / (exp(s cos(f, g_p)) + exp(s cos(f, g_c)))   (in (0, 1))

with ``s`` the model's learnt logit scale: the probability that CLIP picks the prompt over the contrast
prompt, the form the ORW-CFM-W2 paper used for its text-to-image experiments.  Spec strings::

    clip:a photo of a red cat                                       cosine
    clip:a photo of a red cat;contrast=a photo                      probability against "a photo"
    clip:a red cat;model=/path/to/clip;range=-1,1                   a local model, samples in [-1, 1]

``model`` is a local folder or a hub id (loaded from the local cache; default
``openai/clip-vit-base-patch32``).  Images (``[B, C, H, W]``, C = 1 or 3, values in ``range``, default
[0, 1]) are resized, centre-cropped and normalised with the processor's own settings, in batches, on the
model's device, under inference mode.  Text features are computed once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..extras import require
from .protocol import RewardError

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def _features(out: Any) -> Tensor:
    """transformers < 5 returns the projected features; 5 returns an output whose pooler_output holds them."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipReward:
    """CLIP score of images against a prompt (see the module doc).

    Args:
        prompt: the text to reward.
        contrast: a contrast prompt; given, the reward is the probability of ``prompt`` against it.
        model: local folder or hub id of a CLIP model.
        value_range: the range the samples' values are in (mapped to [0, 1] before CLIP's normalisation).
        batch: images per forward pass.
        device: where the model runs (default: CUDA if available, else CPU).
    """

    def __init__(self, prompt: str, *, contrast: str | None = None, model: str = DEFAULT_CLIP,
                 value_range: tuple[float, float] = (0.0, 1.0), batch: int = 64, device: str | None = None) -> None:
        transformers = require("transformers", "clip")
        if not prompt.strip():
            raise RewardError("clip: empty prompt; write clip:a photo of a cat")
        self.prompt, self.contrast, self.value_range, self.batch = prompt, contrast, value_range, batch
        self.name = f"clip:{prompt}" + (f" vs {contrast}" if contrast else "")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model = transformers.CLIPModel.from_pretrained(model).to(self.device).eval()
            processor = transformers.CLIPProcessor.from_pretrained(model)
        except Exception as exc:  # OSError (not found / offline), ValueError (not a CLIP folder), ...
            raise RewardError(f"clip: cannot load the CLIP model {model!r} ({type(exc).__name__}); pass a local folder "
                              "with ;model=DIR, or download the hub model into the cache first") from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        ip = processor.image_processor
        self.resize = int(ip.size["shortest_edge"]) if ip.size.get("shortest_edge") else int(ip.size["height"])
        crop = ip.crop_size or {"height": self.resize, "width": self.resize}
        self.crop = (int(crop["height"]), int(crop["width"]))
        self.mean = torch.tensor(ip.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, device=self.device).view(1, 3, 1, 1)
        texts = [prompt] + ([contrast] if contrast else [])
        tokens = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            self.text = F.normalize(_features(self.model.get_text_features(**tokens)).float(), dim=-1)
            self.scale = float(self.model.logit_scale.exp())

    def pixels(self, x: Tensor) -> Tensor:
        """Samples ``[B, C, H, W]`` -> CLIP's input ``[B, 3, h, w]`` (resize, centre crop, normalise)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise RewardError(f"clip: expects images [B, C, H, W] with C = 1 or 3, got shape {tuple(x.shape)}")
        lo, hi = self.value_range
        x = ((x.float() - lo) / (hi - lo)).clamp(0, 1).to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - self.crop[0]) // 2, (x.shape[-1] - self.crop[1]) // 2
        x = x[..., top:top + self.crop[0], left:left + self.crop[1]]
        return (x - self.mean) / self.std

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        out = []
        with torch.inference_mode():
            for chunk in x.split(self.batch):
                f = F.normalize(_features(self.model.get_image_features(pixel_values=self.pixels(chunk))).float(), dim=-1)
                cos = f @ self.text.T
                out.append(cos[:, 0] if self.contrast is None else torch.softmax(self.scale * cos, dim=-1)[:, 0])
        return torch.cat(out).cpu()


def parse_clip_spec(arg: str) -> ClipReward:
    """``PROMPT[;contrast=TEXT][;model=DIR|HUB_ID][;range=LO,HI]`` -> :class:`ClipReward`."""
    prompt, *options = arg.split(";")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in ("contrast", "model", "range"):
            raise RewardError(f"clip: cannot read option {option!r}; use ;contrast=TEXT, ;model=DIR or ;range=LO,HI")
        if key == "range":
            try:
                lo, hi = (float(v) for v in value.split(","))
            except ValueError:
                raise RewardError(f"clip: cannot read range {value!r}; write ;range=-1,1 or ;range=0,1") from None
            if not hi > lo:
                raise RewardError(f"clip: range {value!r} must go from low to high")
            kwargs["value_range"] = (lo, hi)
        else:
            kwargs[key] = value.strip()
    return ClipReward(prompt.strip(), **kwargs)
