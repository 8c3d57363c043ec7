"""Export a run to files that diffusers and peft load as they are (issue 19).

flowsteer keys a LoRA run's adapter relative to the library network; diffusers' ``load_lora_weights``
warns once about such keys and applies nothing.  :func:`export_run` writes what the other libraries expect:

* ``format="diffusers"`` (default), SD3 LoRA: one file ``pytorch_lora_weights.safetensors`` with keys
  ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``, loaded by
  ``StableDiffusion3Pipeline.load_lora_weights(out)``.  diffusers reads such a file with
  ``lora_alpha = r`` unless its safetensors header carries ``lora_adapter_metadata``, so by default the
  run's scale ``lora_alpha / r`` is folded into ``lora_B``; ``lora_metadata=True`` keeps ``lora_B`` as
  trained and writes ``{"transformer.r", "transformer.lora_alpha", "transformer.target_modules"}`` into
  that header instead (never both).  See :mod:`flowsteer.models.lora_files`.
* ``merge=True``, or a run that fine-tuned every weight: a diffusers model folder
  (``SD3Transformer2DModel`` / ``UNet2DModel``, ``from_pretrained(out)``), the LoRA merged into the base
  as ``W + (lora_alpha / r) B A``.
* ``format="peft"``: ``adapter_model.safetensors`` + ``adapter_config.json`` as
  ``PeftModel.save_pretrained`` writes them (keys ``base_model.model.<module>.lora_A.weight``), loaded
  with ``PeftModel.from_pretrained(network, out)``.

Every export holds a model card ``README.md`` (:mod:`flowsteer.model_card`).  The out folder must be new
or empty; it is assembled in a temporary folder next to it and renamed into place.  A LoRA run of a
diffusers base also writes its export into ``RUN/diffusers/`` when it finishes (:func:`export_finished_run`).

Requires the ``diffusers`` extra (diffusers, peft); nothing here is imported by the core.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ExportConfig
from .errors import ConfigError, RunFolderError
from .extras import require
from .io import disk_errors, folder_mode
from .model_card import load_line, model_card
from .models.lora import adapter_tensors, inner_module, tuner_layers
from .models.lora_files import DIFFUSERS_LORA_WEIGHTS, LORA_KEY, NETWORK_PREFIX, diffusers_lora_state, plain_lora
from .ownership import check_outside_owned
from .runs import EXPORT_DIR, MODEL_CARD_FILE, Run, load_run, read_config, save_adapter, save_weights


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote: the folder, its layout (``lora-file``, ``model-folder`` or ``peft``) and
    how to load it, in one line."""

    path: Path
    layout: str
    load: str


def export_run(config: ExportConfig) -> Exported:
    """Write ``config.run`` in ``config.format`` into the new folder ``config.out``.

    Raises :class:`~flowsteer.errors.ConfigError` (settings, unsupported run, out folder in use) or
    :class:`~flowsteer.errors.RunFolderError` (no such run, damaged run) with a one-line message before
    anything is written.
    """
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    run_dir, out = Path(config.run), Path(config.out)
    _check_out(out)
    check_outside_owned(out)  # never into a run folder (RUN/diffusers/ is the run's own export)
    cfg = read_config(run_dir)
    layout = export_layout(cfg, config, run=run_dir)
    require("diffusers", "diffusers")
    require("peft", "diffusers")
    run = _load(run_dir, cfg)
    write_export(run.model, cfg, out, layout, run=run_dir, lora_metadata=config.lora_metadata)
    return Exported(out, layout, load_line(cfg, out, layout))


def export_finished_run(run_dir: Path, run: Run) -> dict[str, str] | None:
    """``RUN/diffusers/`` at the end of a LoRA run of a diffusers base (None for any other run).

    SD3: the diffusers LoRA file; a UNet2DModel in the rectified-flow convention: the merged model folder
    (its pipelines have no ``load_lora_weights``); a UNet2DModel in flowsteer's convention is skipped, since
    diffusers' schedulers would sample it wrongly.  Returns what ``config.json`` records under
    ``diffusers_export``: ``{"folder", "layout", "load"}``, or ``{"skipped": why}``.
    """
    spec = run.config["model"]
    if not spec.get("lora") or spec.get("kind") not in NETWORK_PREFIX:
        return None
    try:
        layout = export_layout(run.config, ExportConfig(merge=spec["kind"] == "diffusers-unet2d"), run=run_dir)
    except ConfigError as exc:
        return {"skipped": str(exc)}
    model = run.model if layout == "lora-file" else copy.deepcopy(run.model)  # a merge replaces layers in place
    out = run_dir / EXPORT_DIR
    write_export(model, run.config, out, layout, run=run_dir, replace=True)
    return {"folder": EXPORT_DIR, "layout": layout, "load": load_line(run.config, out, layout)}


def write_export(model: nn.Module, cfg: dict[str, Any], out: Path, layout: str, *, run: Path,
                 lora_metadata: bool = False, replace: bool = False) -> None:
    """Assemble the export of ``model`` (the run with ``config.json`` ``cfg``) next to ``out`` and rename it into
    place; ``replace``: an earlier export there is replaced (else ``out`` must be new or empty)."""
    spec = cfg["model"]
    with disk_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
    try:
        with disk_errors(out):
            tmp.chmod(folder_mode())  # mkdtemp makes 0700; the export is a folder like any other
            if layout == "lora-file":
                state, header = diffusers_lora_state(adapter_tensors(model), spec["lora"], spec["kind"],
                                                     metadata=lora_metadata)
                save_weights(tmp / DIFFUSERS_LORA_WEIGHTS, state, metadata=header)
            elif layout == "peft":
                save_adapter(tmp, model, spec["lora"])
            else:
                _merged_network(model, cfg).save_pretrained(str(tmp), safe_serialization=True)
            card = model_card(cfg, out, layout, run=run, lora_metadata=lora_metadata)
            (tmp / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
        if replace and out.is_dir():
            shutil.rmtree(out)
        _check_out(out)  # still free after the (possibly long) write
        with disk_errors(out):
            if out.exists():
                out.rmdir()
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_layout(cfg: dict[str, Any], config: ExportConfig, *, run: str | Path = "") -> str:
    """What an export of the run with ``config.json`` ``cfg`` writes: ``lora-file``, ``model-folder`` or ``peft``.

    Raises :class:`ConfigError` (one line) for a run that cannot be exported that way.
    """
    spec = cfg.get("model") or {}
    kind, lora = spec.get("kind"), spec.get("lora")
    where = f"{str(run)!r}: " if str(run) else ""
    if kind not in NETWORK_PREFIX:
        raise ConfigError(f"{where}this run trained flowsteer's own {kind!r} network, whose weights exist only in "
                          "flowsteer's run format (load it with flowsteer.load_run); export writes diffusers and peft "
                          "files for runs on a diffusers base (--base diffusers:DIR)")
    if lora:
        _check_lora_base(cfg, where)
    if config.format == "peft":
        if not lora:
            raise ConfigError(f"{where}--format peft writes a LoRA adapter, but this run fine-tuned every weight; drop "
                              "--format peft to write a diffusers model folder")
        return "peft"
    if kind == "diffusers-unet2d" and spec.get("convention", "flowsteer") != "rectified-flow":
        fix = "export the adapter with --format peft" if lora else "use it through flowsteer.load_run"
        raise ConfigError(f"{where}this UNet2DModel was trained with flowsteer's time convention (timestep = 1000 t, "
                          "t = 0 is noise, output = data - noise); diffusers' pipelines and schedulers expect the "
                          f"rectified-flow convention, so a diffusers export would sample wrongly: {fix}")
    if float(spec.get("time_scale", 1000.0)) != 1000.0:
        raise ConfigError(f"{where}this run feeds the network timestep {spec.get('time_scale')} t, diffusers' "
                          "schedulers use 1000; export it with --format peft or use it through flowsteer.load_run")
    if lora and not config.merge:
        if kind == "diffusers-unet2d":
            raise ConfigError(f"{where}UNet2DModel pipelines (DDPMPipeline) have no load_lora_weights, so a diffusers "
                              "LoRA file cannot be loaded; pass --merge for a model folder or --format peft for the "
                              "adapter")
        return "lora-file"
    if config.lora_metadata:
        raise ConfigError(f"{where}--lora-metadata describes a LoRA file, but this export is a model folder; drop "
                          "--lora-metadata")
    return "model-folder"


def _check_lora_base(cfg: dict[str, Any], where: str) -> None:
    """A LoRA trained on a fully fine-tuned flowsteer run cannot be exported against the diffusers folder.

    A LoRA run records the diffusers folder its base network came from; if that base was itself a run that
    changed every weight, those weights are not part of this run, and the adapter would be applied to the
    original network instead of the one it was trained on.
    """
    base = str(cfg.get("base") or "")
    if not base or base.startswith("diffusers:"):
        return
    try:
        base_cfg = read_config(base)
    except RunFolderError:
        raise ConfigError(f"{where}the base run {base!r} of this LoRA is missing, so it cannot be checked that the "
                          "adapter applies to the diffusers folder's own weights; restore the base run") from None
    if not (base_cfg.get("model") or {}).get("lora"):
        raise ConfigError(f"{where}this LoRA was trained on the fine-tuned weights of the run {base!r}, which a LoRA "
                          "run does not keep (it records only the original diffusers folder), so no export would "
                          "reproduce it; align that base again with --lora-rank on a diffusers:DIR base")


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {str(out)!r} is a file; pass a new or empty folder for the export")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} already holds files; pass a new or empty folder (nothing was written)")


def _load(run_dir: Path, cfg: dict[str, Any]) -> Run:
    pretrained = (cfg.get("model") or {}).get("pretrained")
    if pretrained and not Path(pretrained).is_dir():
        raise RunFolderError(f"{str(run_dir)!r}: its base diffusers folder {pretrained!r} is missing; the export needs "
                             "the base weights - restore that folder")
    return load_run(run_dir)


def _merged_network(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """The diffusers network of a run with its LoRA (if any) merged in: ``W += (lora_alpha / r) B A``, in place."""
    inner = inner_module(model)
    lora = cfg["model"].get("lora")
    if not lora:
        return inner
    scale = float(lora["lora_alpha"]) / int(lora["r"])
    state = plain_lora(adapter_tensors(model))
    modules = sorted({LORA_KEY.match(k)["module"] for k in state})
    with torch.no_grad():
        for name in modules:
            layer = inner.get_submodule(name)
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
            if not isinstance(base, nn.Linear):
                raise ConfigError(f"cannot merge the LoRA of {name!r} ({type(base).__name__}); only linear layers "
                                  "merge - export it with --format peft")
            a, b = state[f"{name}.lora_A.weight"].double(), state[f"{name}.lora_B.weight"].double()
            base.weight.copy_((base.weight.double() + scale * (b @ a)).to(base.weight.dtype))
            parent_name, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent_name) if parent_name else inner, child, base)
    if tuner_layers(inner):
        raise ConfigError("the run's network holds LoRA layers the adapter file does not list; export it with "
                          "--format peft")
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in inner.__dict__:
            delattr(inner, attr)
    return inner
