"""What every method shares around the one Trainer, written once.

* :func:`run_context`: the process group, this rank's share of the batch and the run's seeded generator;
* :func:`prepare_model`: the network to train and the frozen reference from a base (full fine-tuning, or
  LoRA adapters whose disabled view is the reference);
* :func:`fit`: the Trainer writing a run folder, with resume;
* :func:`finish_run`: the epilogue (config, final metrics, LoRA adapter, plots) and the returned :class:`Run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..checkpoints import RunWriter, load_trainer_state, resolve_checkpoint
from ..config import TrainConfig
from ..devices import precision_problems, resolve_device
from ..distributed import Distributed, setup
from ..errors import ConfigError, RunFolderError
from ..export import export_finished_run
from ..io import atomic_write_json, disk_errors
from ..models import build_model
from ..models.lora import AdapterDisabled, add_lora, lora_spec
from ..models.lora_files import init_lora as load_lora_file, read_lora
from ..models.weights import load_trainable_state_dict
from ..progress import Progress
from ..resume import Change, resume_changes
from ..runs import FINAL_METRICS_FILE, WEIGHTS_FILE, Run, read_config, save_adapter, save_prompt_embeds, write_config
from ..training import Objective, Trainer, seed_everything


@dataclass
class RunContext:
    """What this process trains with.

    Attributes:
        dist: the process group (one process, or accelerate's).
        train: the run's :class:`TrainConfig` with ``batch_size`` this rank's share of the global batch.
        generator: the run's seeded generator (rank ``r`` draws from seed ``seed + r``; rank 0's stream is the
            single-process one).
    """

    dist: Distributed
    train: TrainConfig
    generator: torch.Generator
    device: torch.device


def run_device(train: TrainConfig) -> torch.device:
    """The run's device: ``--device`` (``auto``: CUDA when available), or this rank's GPU under a launcher;
    ``--precision`` and ``--compile`` are checked against it."""
    dist = setup()
    device = dist.device if dist.enabled and dist.device is not None else resolve_device(train.device)
    if device.type == "cpu":
        device = torch.device("cpu")  # accelerate says cpu:0; safetensors and the rest want plain cpu
    problems = precision_problems(device, train.precision, compile=train.compile)
    if problems:
        raise ConfigError.listing(problems)
    return device


def run_context(train: TrainConfig, *, device: torch.device, desc: str, multi_process: bool = True) -> RunContext:
    """Seed the run and find this rank's share of the batch (``multi_process=False`` refuses a launcher).

    The run's generator lives on ``device``: every batch, noise and time draw of the run comes from it.
    """
    dist = setup()
    if dist.enabled and not multi_process:
        raise ConfigError(f"{desc} runs in one process; multi-process training (accelerate launch) is supported "
                          "for align and adapt - launch this command without accelerate")
    local = dataclasses.replace(train, batch_size=dist.local_batch(train.batch_size))
    generator = seed_everything(train.seed, device)  # the same on every rank: the same initial weights
    if dist.enabled:
        generator = torch.Generator(device=device).manual_seed(dist.rank_seed(train.seed))
    return RunContext(dist=dist, train=local, generator=generator, device=device)


@dataclass
class PreparedModel:
    """The network a fine-tuning run trains and the frozen reference it is measured against.

    Attributes:
        model: the trained network (a fresh copy of the base, or the base with LoRA adapters).
        reference: the base's velocity, frozen (for LoRA: the same network with its adapters disabled).
        spec: the model spec saved in ``config.json`` (with a ``lora`` entry for LoRA runs).
    """

    model: nn.Module
    reference: nn.Module
    spec: dict[str, Any]


def check_init_lora(path: str, *, lora_rank: int = 0, lora_alpha: float | None = None) -> dict[str, Any]:
    """The LoRA spec of ``--init-lora PATH`` (read from the file), checked against --lora-rank and --lora-alpha."""
    _, spec = read_lora(path)
    if lora_rank not in (0, spec["r"]):
        raise ConfigError(f"--init-lora {path!r} has rank {spec['r']}, --lora-rank says {lora_rank}; drop --lora-rank "
                          "(the rank comes from the file)")
    if lora_alpha is not None and float(lora_alpha) != spec["lora_alpha"]:
        raise ConfigError(f"--init-lora {path!r} has lora_alpha {spec['lora_alpha']:g}, --lora-alpha says "
                          f"{lora_alpha:g}; drop --lora-alpha (the scale comes from the file)")
    return spec


def prepare_model(base: Run, *, lora_rank: int = 0, lora_alpha: float | None = None,
                  init_lora: str | None = None) -> PreparedModel:
    """Full fine-tuning (a copy of the base's weights, the base as reference) or rank-``lora_rank`` LoRA.

    ``init_lora``: a LoRA file or folder (diffusers' or peft's format, or a flowsteer LoRA run) to start the
    adapters from instead of a fresh one; its rank and alpha are the run's.  The reference is still the
    base without adapters.
    """
    spec = dict(base.config["model"])
    if lora_rank or init_lora:
        if spec.get("lora"):
            flag = "--init-lora" if init_lora else "--lora-rank"
            raise ConfigError(f"{flag}: the base already carries a LoRA adapter; fine-tune it without {flag} "
                              "(that trains its adapter further)")
        model = base.model  # one network: the adapters train, and with them disabled it is the reference
        if base.path is not None:  # a flowsteer run: its trained weights, not the spec's initialisation, are the base
            spec["base_weights"] = str((base.path / WEIGHTS_FILE).resolve())
        if init_lora:
            check_init_lora(init_lora, lora_rank=lora_rank, lora_alpha=lora_alpha)
            spec["lora"] = load_lora_file(model, init_lora)
        else:
            spec["lora"] = lora_spec(model, rank=lora_rank, alpha=lora_alpha)
            add_lora(model, spec["lora"])
        model.train()
        return PreparedModel(model=model, reference=AdapterDisabled(model), spec=spec)
    with torch.device(next(base.model.parameters()).device):
        model = build_model(spec)
    model.load_state_dict(base.model.state_dict())
    reference = base.model.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return PreparedModel(model=model, reference=reference, spec=spec)


def run_header(method: str, spec: dict[str, Any], settings: dict[str, Any], seed: int, *, device: torch.device,
               **extra: Any) -> dict[str, Any]:
    """The fields every run's ``config.json`` starts with (``device``: where it trained; loading needs none)."""
    return {"flowsteer_version": __version__, "method": method, "model": spec, "settings": settings, "seed": seed,
            "trained_on": str(device), **extra}


def fit(
    model: nn.Module,
    objective: Objective,
    train: TrainConfig,
    *,
    generator: torch.Generator,
    out: Path | None,
    run_config: dict[str, Any],
    progress: str,
    desc: str,
    resume: bool | str | None = False,
    evaluate: Callable[[Trainer], dict[str, Any]] | None = None,
    eval_every: int = 0,
    dist: Distributed | None = None,
) -> Trainer:
    """Run the shared Trainer for one method, writing ``out`` as a run folder (None = in memory).

    ``resume``: False/None, True / ``"auto"`` (the latest checkpoint) or a checkpoint folder name.
    ``dist``: with several processes every rank reads the checkpoint it resumes from, and rank 0 alone
    writes the run folder and shows progress.
    """
    dist = dist or Distributed()
    checkpoint, state, changes = None, None, []
    if resume and out is not None:
        checkpoint = resolve_checkpoint(out, "auto" if resume is True else str(resume)) if out.is_dir() else None
        if checkpoint is None:
            raise ConfigError(f"--resume: {str(out)!r} has no checkpoint to resume from; drop --resume to start "
                              "the run again (pass --checkpoint-every N to checkpoint during training)")
        state = load_trainer_state(checkpoint)
        changes = _resume_changes(out, run_config, train, int(state["step"]), checkpoint.name)
    if train.log == "tensorboard" and out is None:
        raise ConfigError("--log tensorboard writes into the run folder; give --out")
    bar = Progress(train.steps, mode=progress if dist.is_main else "quiet", desc=desc)
    trainer = Trainer(model, objective, train, generator=generator, progress=bar, evaluate=evaluate,
                      eval_every=eval_every, dist=dist)  # checks every setting before the folder is made
    writer = RunWriter(out, run_config, keep_last=train.keep_last, tensorboard=train.log == "tensorboard") \
        if out is not None and dist.is_main else None
    if writer is not None:
        trainer.checkpoint_fn, trainer.log_fn = writer.checkpoint, writer.log
    if checkpoint is not None and state is not None:
        trainer.load_state_dict(state)  # the optimiser takes this run's --lr and warm-up (Trainer.load_state_dict)
        if writer is not None:
            writer.truncate_metrics(trainer.step)
        bar.message(f"resumed {out} at step {trainer.step} from {checkpoint.name}")
        for change in changes:
            bar.message(change.notice(trainer.step))
        if writer is not None and changes:
            writer.log({"step": trainer.step, "kind": "resume", "checkpoint": checkpoint.name,
                        "changed": {c.flag: {"from": c.old, "to": c.new} for c in changes}})
    if writer is not None:
        writer.open_board(trainer.step)
    try:
        trainer.fit()
    finally:
        if writer is not None:
            writer.close()
    return trainer


def _resume_changes(out: Path, run_config: dict[str, Any], train: TrainConfig, step: int, name: str) -> list[Change]:
    """The settings a resume changes against the run's saved ones (:mod:`flowsteer.resume`): refused ones raise
    (the command line refuses them before any work; this covers the Python API), applied ones are returned."""
    if step > train.steps:
        raise ConfigError(f"--resume: {name} is at step {step}, past --steps {train.steps}; give --steps {step} or "
                          "more (or leave --steps out to keep the run's)")
    try:
        saved = read_config(out).get("settings")
    except RunFolderError:
        saved = None
    if not isinstance(saved, dict) or not isinstance(run_config.get("settings"), dict):
        return []
    changes = resume_changes(str(run_config.get("method")), saved, run_config["settings"])
    refused = [c.refusal(str(out)) for c in changes if not c.apply]
    if refused:
        raise ConfigError.listing(refused)
    return changes


def finish_run(trainer: Trainer, run_config: dict[str, Any], out: Path | None, *, spec: dict[str, Any],
               final: dict[str, Any] | None = None, dist: Distributed | None = None,
               plots: Callable[[Path], None] | None = None, prompt_embeds: dict[str, torch.Tensor] | None = None) -> Run:
    """The epilogue every method shares: ``config.json`` (with ``final``), ``final_metrics.json``, the LoRA
    adapter (peft's format, and diffusers' for SD3) and the method's plots, then for a LoRA run of a diffusers
    base its export in ``diffusers/`` (rank 0 only); returns the trained run, holding its sampling weights
    (the EMA when enabled).

    The export comes last and its failure is recorded, not raised: the run's own files are complete by
    then, and ``flowsteer export`` can write it again.
    """
    dist = dist or Distributed()
    if final is not None:
        run_config["final"] = final
    config = {**run_config, "steps_done": trainer.step}
    if out is not None and dist.is_main:
        write_config(out, config)
        if final is not None:
            atomic_write_json(out / FINAL_METRICS_FILE, final)
        if spec.get("lora"):
            save_adapter(out, trainer.model, spec["lora"], weights=trainer.sampling_state_dict(),
                         kind=spec.get("kind"))
        if plots is not None:
            plots(out)
    if spec.get("lora"):  # the trained network itself, holding its sampling adapter weights
        load_trainable_state_dict(trainer.model, {k: v.clone() for k, v in trainer.sampling_state_dict().items()})
        sampler = trainer.model.eval()
    else:
        with torch.device(trainer.device):
            sampler = build_model(spec)
        sampler.load_state_dict(trainer.sampling_state_dict())
        sampler.eval()
    run = Run(model=sampler, config=config, path=out, prompt_embeds=prompt_embeds)
    if out is not None and dist.is_main:
        try:
            note = export_finished_run(out, run)
        except Exception as exc:  # noqa: BLE001 - the run is saved; say why its export is missing instead
            first = (str(exc).splitlines() or [""])[0][:200]
            note = {"failed": f"{type(exc).__name__}: {first}; write it with flowsteer export {out} --out DIR"}
        if note is not None:
            config["diffusers_export"] = note
            write_config(out, config)
    return run


def start_run_folder(out: Path | None, prompt_embeds: dict[str, torch.Tensor] | None, dist: Distributed) -> None:
    """Files a run needs before its first checkpoint: a text-conditioned run's prompt states."""
    if out is not None and prompt_embeds and dist.is_main:
        with disk_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        save_prompt_embeds(out, prompt_embeds)
