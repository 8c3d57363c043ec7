"""Other tools' LoRA files: diffusers' and peft's key layouts, both ways, and loading one into a flowsteer model.

flowsteer keys an adapter relative to the library network, as peft's ``get_peft_model_state_dict`` does
(``transformer_blocks.0.attn.to_q.lora_A.weight``).  The other layouts:

* diffusers (``pipe.load_lora_weights(DIR)`` reads ``pytorch_lora_weights.safetensors``): the same keys
  behind the network's name in the pipeline (``transformer.`` for SD3).  A file without the
  ``lora_adapter_metadata`` header is read with ``lora_alpha = r``, so :func:`diffusers_lora_state` folds
  the scale ``lora_alpha / r`` into ``lora_B`` unless asked to record it in that header instead;
* peft (``PeftModel.from_pretrained(network, DIR)`` reads ``adapter_model.safetensors`` +
  ``adapter_config.json``): the keys behind ``base_model.model.`` (:func:`peft_state`).

:func:`read_lora` reads either (a file, or a folder holding one) back into flowsteer's keys and LoRA spec,
refusing anything that cannot be applied exactly; :func:`init_lora` loads one into a velocity model.
The file names here are diffusers' and peft's own (``tests/test_export.py`` checks them against the
libraries' constants); a run folder's names are :mod:`flowsteer.runs`'.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ..errors import ConfigError
from ..io import json_text
from .lora import add_lora, inner_module
from .weights import has_lora, load_trainable_state_dict, trainable_state_dict

DIFFUSERS_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers.loaders.lora_base.LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # peft.utils' names
PEFT_MODEL_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before every key

# the key prefix of each diffusers network in a pipeline's LoRA file, and the text encoders' (never ours)
NETWORK_PREFIX = {"diffusers-sd3": "transformer", "diffusers-unet2d": "unet"}
TEXT_ENCODER_PREFIXES = ("text_encoder", "text_encoder_2", "text_encoder_3")
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


# --------------------------------------------------------------------------- writing


def plain_lora(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors (CPU, contiguous) if every one is a linear layer's ``lora_A`` / ``lora_B``; else one line."""
    odd = [k for k in tensors if not LORA_KEY.match(k)]
    if odd:
        raise ConfigError(f"the adapter holds tensors a plain LoRA file cannot carry ({odd[0]!r}); export it with "
                          "--merge")
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def diffusers_lora_state(tensors: dict[str, Tensor], lora: dict[str, Any], kind: str, *,
                         metadata: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(state, header)`` of the diffusers LoRA file of flowsteer adapter ``tensors`` (spec ``lora``, network
    ``kind``): keys ``<network>.<module>.lora_A.weight``; the scale folded into ``lora_B``, or (``metadata``)
    ``lora_B`` as trained and ``{r, lora_alpha, target_modules}`` in the ``lora_adapter_metadata`` header."""
    prefix = NETWORK_PREFIX[kind]
    scale = float(lora["lora_alpha"]) / int(lora["r"])
    state = {}
    for key, value in plain_lora(tensors).items():
        if not metadata and key.endswith(".lora_B.weight") and scale != 1.0:
            value = (value.double() * scale).to(value.dtype)  # diffusers reads this file with lora_alpha = r
        state[f"{prefix}.{key}"] = value.contiguous()
    header = {"format": "pt"}
    if metadata:
        described = {"r": int(lora["r"]), "lora_alpha": float(lora["lora_alpha"]),
                     "target_modules": list(lora["target_modules"])}
        header[METADATA_KEY] = json_text({f"{prefix}.{k}": v for k, v in described.items()}).rstrip("\n")
    return state, header


def peft_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """flowsteer adapter tensors keyed as ``PeftModel.save_pretrained`` writes them (``base_model.model.*``)."""
    return {PEFT_MODEL_PREFIX + k: v for k, v in plain_lora(tensors).items()}


def from_peft_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`peft_state`; keys without the prefix (flowsteer's older run folders) pass unchanged."""
    if state and all(k.startswith(PEFT_MODEL_PREFIX) for k in state):
        return {k[len(PEFT_MODEL_PREFIX):]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------- reading


def read_lora(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a LoRA: a diffusers file (or a folder holding ``pytorch_lora_weights.safetensors``) or a peft folder.

    Returns ``(state, spec)``: ``state`` keyed relative to the library network, as
    :func:`flowsteer.models.lora.adapter_tensors` keys it (``transformer_blocks.0.attn.to_q.lora_A.weight``),
    and ``spec = {"r", "lora_alpha", "target_modules"}`` read from the file (a diffusers file without
    ``lora_adapter_metadata`` has ``lora_alpha = r``, as diffusers reads it).  Raises :class:`ConfigError`
    (one line) for anything flowsteer cannot apply exactly: text-encoder or unknown keys, mixed ranks,
    per-module ranks or alphas, DoRA.
    """
    path = Path(path)
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file() and (path / PEFT_WEIGHTS).is_file():
            return _read_peft(path)  # also a flowsteer LoRA run folder, which holds both: peft's keeps lora_alpha
        if (path / DIFFUSERS_LORA_WEIGHTS).is_file():
            return _read_diffusers(path / DIFFUSERS_LORA_WEIGHTS)
        raise ConfigError(f"{str(path)!r} holds neither {DIFFUSERS_LORA_WEIGHTS} (diffusers) nor {PEFT_CONFIG} + "
                          f"{PEFT_WEIGHTS} (peft); pass a LoRA file or folder")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ConfigError(f"{str(path)!r} is not a .safetensors file; pass a diffusers LoRA .safetensors file or a "
                              "peft adapter folder")
        return _read_diffusers(path)
    raise ConfigError(f"LoRA {str(path)!r}: no such file or folder; pass a diffusers LoRA .safetensors file or a peft "
                      "adapter folder")


def _load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{str(path)!r}: cannot read it as safetensors ({type(exc).__name__}); the file is damaged "
                          "or not a LoRA") from None
    if not state:
        raise ConfigError(f"{str(path)!r} holds no tensors; pass a LoRA file")
    return state, header


def _read_diffusers(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    raw, header = _load_tensors(path)
    heads = {k.split(".", 1)[0] for k in raw}
    encoders = sorted(heads & set(TEXT_ENCODER_PREFIXES))
    if encoders:
        raise ConfigError(f"{str(path)!r} holds LoRA weights for {encoders[0]}; flowsteer fine-tunes the denoising "
                          "network only - drop the text-encoder keys")
    prefixes = set(NETWORK_PREFIX.values())
    stray = sorted(k for k in raw if k.split(".", 1)[0] not in prefixes)
    if stray:
        hint = (f"; if it is a peft adapter, pass its folder with {PEFT_CONFIG}" if LORA_KEY.match(stray[0]) else
                "; flowsteer reads diffusers/peft LoRA keys (<network>.<module>.lora_A.weight / lora_B.weight)")
        raise ConfigError(f"{str(path)!r}: unknown key {stray[0]!r} (a diffusers LoRA file names its network, e.g. "
                          f"'transformer.'){hint}")
    odd = sorted(k for k in raw if not LORA_KEY.match(k))
    if odd:
        raise ConfigError(f"{str(path)!r}: unknown key {odd[0]!r}; flowsteer reads LoRA keys "
                          "<network>.<module>.lora_A.weight / lora_B.weight only")
    if len(heads) > 1:
        raise ConfigError(f"{str(path)!r} holds LoRA weights for several networks ({', '.join(sorted(heads))}); "
                          "pass a file for one")
    (prefix,) = heads
    state = {k[len(prefix) + 1:]: v for k, v in raw.items()}
    meta = None
    if header.get(METADATA_KEY):
        try:
            packed = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError:
            raise ConfigError(f"{str(path)!r}: its {METADATA_KEY} header is not JSON; re-export the LoRA") from None
        meta = {k[len(prefix) + 1:]: v for k, v in packed.items() if k.startswith(prefix + ".")} or None
    return _checked(state, meta, repr(str(path)))


def _read_peft(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{folder / PEFT_CONFIG}: not valid JSON ({type(exc).__name__}); "
                          "re-save the adapter") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise ConfigError(f"{folder / PEFT_CONFIG} does not describe a LoRA adapter (peft_type "
                          f"{config.get('peft_type') if isinstance(config, dict) else None!r}); pass a LoRA adapter")
    raw, _ = _load_tensors(folder / PEFT_WEIGHTS)
    return _checked(from_peft_state(raw), config, repr(str(folder)))


def _checked(state: dict[str, Tensor], meta: dict[str, Any] | None, where: str) -> tuple[dict[str, Tensor], dict]:
    """Check keys and shapes; the spec from the metadata/config ``meta`` (None: diffusers' rule, alpha = r)."""
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = LORA_KEY.match(key)
        if m is None:
            raise ConfigError(f"{where}: unknown key {key!r}; flowsteer reads LoRA keys <module>.lora_A.weight / "
                              "<module>.lora_B.weight only")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    ranks = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"{where}: {module!r} has lora_{'A' if 'A' in ab else 'B'} but no "
                              f"lora_{'B' if 'A' in ab else 'A'}; the file is incomplete")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ConfigError(f"{where}: {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, which are "
                              "not the [r, in] and [out, r] of a linear LoRA")
        ranks[module] = int(a.shape[0])
    if meta is not None:
        for key in ("rank_pattern", "alpha_pattern"):
            if meta.get(key):
                raise ConfigError(f"{where}: the adapter sets per-module ranks or alphas ({key}); flowsteer's LoRA has "
                                  "one rank and one alpha for every layer - re-save it without them")
        if meta.get("use_dora"):
            raise ConfigError(f"{where}: a DoRA adapter (use_dora); flowsteer applies plain LoRA only")
        if meta.get("lora_bias"):
            raise ConfigError(f"{where}: the adapter has lora_B biases (lora_bias); flowsteer applies plain LoRA only")
    declared = int(meta["r"]) if meta is not None and meta.get("r") is not None else None
    if len(set(ranks.values())) > 1:
        counts = sorted(set(ranks.values()))
        raise ConfigError(f"{where}: the layers have different ranks ({', '.join(map(str, counts))}); flowsteer's "
                          "LoRA has one rank for every layer - pass an adapter of one rank")
    (r,) = set(ranks.values())
    if declared is not None and declared != r:
        raise ConfigError(f"{where}: its config says r = {declared} but the tensors have rank {r}; the file and its "
                          "config do not belong together")
    alpha = float(meta.get("lora_alpha", r)) if meta is not None else float(r)
    if meta is not None and meta.get("use_rslora"):  # scale alpha / sqrt(r), written as alpha' / r
        alpha = alpha * math.sqrt(r)
    modules = sorted(pairs)
    targets = meta.get("target_modules") if meta is not None else None
    narrowing = ("layers_to_transform", "layers_pattern", "exclude_modules")
    narrowed = meta is not None and any(meta.get(k) for k in narrowing)
    if not isinstance(targets, (list, tuple)) or narrowed or not targets:
        targets = modules
    targets = sorted({str(t) for t in targets})  # peft writes a set: its order varies from run to run
    uncovered = [m for m in modules if not any(m == t or m.endswith("." + t) for t in targets)]
    if uncovered:
        raise ConfigError(f"{where}: the layer {uncovered[0]!r} is not among its target_modules; the file and its "
                          "config do not belong together")
    return dict(sorted(state.items())), {"r": r, "lora_alpha": alpha, "target_modules": list(targets)}


def init_lora(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Inject the LoRA at ``path`` (see :func:`read_lora`) into a flowsteer velocity model and load its tensors.

    The model (e.g. :class:`flowsteer.models.adapters.SD3Velocity` from
    :func:`flowsteer.models.build_model`) must have no adapter yet.  Returns the LoRA spec, the ``lora``
    entry of the run's model spec.  Every layer of the file is checked against the model before anything
    is injected.
    """
    if has_lora(model):
        raise ConfigError("the model already has LoRA adapters; start from a base model to load a LoRA into it")
    state, spec = read_lora(path)
    inner = inner_module(model)
    for key, value in state.items():
        m = LORA_KEY.match(key)
        try:
            layer = inner.get_submodule(m["module"])
        except AttributeError:
            raise ConfigError(f"LoRA {str(path)!r}: the model has no layer {m['module']!r}; is the LoRA for another "
                              "base model?") from None
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"LoRA {str(path)!r}: {m['module']!r} is a {type(layer).__name__}, not a linear layer")
        expected = (spec["r"], layer.in_features) if m["ab"] == "A" else (layer.out_features, spec["r"])
        if tuple(value.shape) != expected:
            raise ConfigError(f"LoRA {str(path)!r}: {key!r} has shape {tuple(value.shape)}, the model needs "
                              f"{expected}; is the LoRA for another base model?")
    add_lora(model, spec)
    prefix = next((n + "." for n, m in model.named_children() if m is inner), "")
    live = {k[len(prefix):].replace(".default.", "."): k for k in trainable_state_dict(model)}
    if set(live) != set(state):
        extra = sorted(set(live) - set(state))
        raise ConfigError(f"LoRA {str(path)!r}: its target_modules also select {extra[0]!r}, which the file has no "
                          "weights for; re-save the adapter with target_modules naming its layers")
    load_trainable_state_dict(model, {live[k]: v for k, v in state.items()})
    return spec
