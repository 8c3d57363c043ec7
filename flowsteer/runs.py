"""Run folders: everything needed to load a model by path alone and to resume.

A run folder holds::

    config.json          format version, model spec, data shape and normalisation,
                         the path (sigma), every setting and the seed
    model.safetensors    the weights used for sampling (the EMA when enabled)
    metrics.jsonl        one JSON record per logged step
    checkpoint-STEP/     model.safetensors + trainer_state.pt (raw weights, optimiser, scheduler,
                         EMA, RNG states, step, the method's own state); the newest ``keep_last``
    latest               the name of the newest complete checkpoint folder
    prompt_embeds.safetensors   text-conditioned runs: the prompt's encoder states (config ``condition``)
    adapter_model.safetensors + adapter_config.json   LoRA runs: the adapter in peft's format, keyed as
                         ``PeftModel.save_pretrained`` keys it, so ``PeftModel.from_pretrained(network, RUN)``
                         loads it (the model.safetensors of a LoRA run holds the adapter tensors only; the
                         base weights come from the spec's ``pretrained`` folder)
    pytorch_lora_weights.safetensors   SD3 LoRA runs: the adapter as a diffusers LoRA file (keys
                         ``transformer.*``, the scale folded into lora_B), the one file diffusers picks, so
                         ``pipe.load_lora_weights(RUN)`` applies it
    diffusers/           LoRA runs of a diffusers base: the export of :mod:`flowsteer.export` (the LoRA
                         file or a merged model folder, and a model card ``README.md``)

Every file is written atomically (temporary file + rename); a checkpoint folder is assembled under
a temporary name and renamed into place, and ``latest`` moves only after that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .data import Normalizer
from .errors import ConfigError, RunFolderError
from .io import append_jsonl, atomic_path, atomic_write_json
from .models import build_model
from .models.adapters import build_decoder
from .models.lora import adapter_tensors, inject_saved_adapter, peft_config
from .models.lora_files import diffusers_lora_state, from_peft_state, peft_state
from .models.weights import load_trainable_state_dict
from .solvers import SampleResult, integrate

RUN_FORMAT = "flowsteer-run"
RUN_FORMAT_VERSION = 1

# Every file name of a run folder (and of a sweep folder) is spelled here and nowhere else.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
EVALUATION_FILE = "evaluation.json"
PROMPT_FILE = "prompt_embeds.safetensors"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
EXPORT_DIR = "diffusers"
MODEL_CARD_FILE = "README.md"
TENSORBOARD_DIR = "tensorboard"
LATEST_FILE, CHECKPOINT_PREFIX = "latest", "checkpoint-"
SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
REWARD_CURVE_PLOT = "reward_curve.png"
PARETO_PLOT = "pareto.png"
METRICS_VS_STEP_PLOT = "metrics_vs_step.png"
METRICS_VS_NFE_PLOT = "metrics_vs_nfe.png"
REPORT_PAGE, REPORT_IMAGES = "index.html", "img"
# Bookkeeping of every folder a flowsteer command writes (see flowsteer.ownership): what made it, and the
# lock its writer holds.  Temporaries of killed writers (checkpoint folders, atomic writes, exports) are
# dot-names ending in TEMP_SUFFIXES or holding ".tmp."; the next run of the folder removes them.
OWNER_FILE = ".flowsteer-folder.json"
LOCK_FILE = ".flowsteer.lock"
TEMP_SUFFIXES = (".tmp", ".export-tmp")


def save_weights(path: Path, state: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    full = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **config}
    atomic_write_json(run_dir / CONFIG_FILE, full)


def log_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    append_jsonl(run_dir / METRICS_FILE, record)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a run's ``config.json`` (one-line errors for anything wrong)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunFolderError(f"run folder {str(run_dir)!r} does not exist; pass the --out folder of a flowsteer pretrain/align/adapt run")
    if not run_dir.is_dir():
        raise RunFolderError(f"{str(run_dir)!r} is a file, not a run folder; pass the --out folder of a flowsteer run")
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise RunFolderError(f"{str(run_dir)!r} is not a flowsteer run (no {CONFIG_FILE}); pass the --out folder of a flowsteer pretrain/align/adapt run")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{cfg_path}: damaged config ({exc.__class__.__name__}); re-run the command that made this folder") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{str(run_dir)!r} is not a flowsteer run ({CONFIG_FILE} has no flowsteer format tag); pass a flowsteer run folder")
    version = cfg.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise RunFolderError(
            f"{str(run_dir)!r} was written in run format {version}, this flowsteer reads format {RUN_FORMAT_VERSION}; "
            "re-create the run with this version"
        )
    return cfg


@dataclass
class Run:
    """A loaded run: the model, its config, and sampling in data units.

    Attributes:
        model: the velocity network (eval mode, sampling weights).
        config: the run's ``config.json`` as a dict.
        path: the run folder (None for an in-memory run).
    """

    model: nn.Module
    config: dict[str, Any]
    path: Path | None = None
    prompt_embeds: dict[str, Tensor] | None = None
    normalizer: Normalizer = field(init=False)
    _decoder: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.normalizer = Normalizer.from_config(self.config["data"]["normalizer"])

    def decode(self, z: Tensor) -> Tensor:
        """Model units ``[B, *shape]`` -> data units (for a latent model: images ``[B, 3, H, W]`` in [0, 1])."""
        x = self.normalizer.decode(z)
        spec = self.config["data"].get("decoder")
        if spec is None:
            return x
        if self._decoder is None:
            self._decoder = build_decoder(spec, device=x.device)
        return self._decoder(x)

    def condition(self, n: int) -> dict[str, Tensor]:
        """The conditions every sample of a text-conditioned run gets (its prompt's states), else ``{}``."""
        if not self.prompt_embeds:
            return {}
        return {k: v.expand(n, *v.shape[1:]) for k, v in self.prompt_embeds.items()}

    @property
    def device(self) -> torch.device:
        """Where the run's network lives."""
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config["data"]["shape"])

    @property
    def sigma(self) -> float:
        return float(self.config["path"].get("sigma", 0.0))

    @property
    def num_classes(self) -> int:
        return int(self.config["model"].get("num_classes", 0))

    def default_solver(self) -> str:
        return "euler-maruyama" if self.sigma > 0 else "heun"

    def sample(
        self,
        n: int,
        *,
        solver: str | None = None,
        steps: int = 50,
        seed: int = 0,
        labels: Tensor | None = None,
        return_trajectory: bool = False,
        decode: bool = True,
    ) -> SampleResult:
        """Draw ``n`` samples (``[n, *shape]``, data units when ``decode``).

        Args:
            solver: default ``heun`` (sigma = 0) or ``euler-maruyama`` (sigma > 0).
            steps: solver steps.  seed: seeds the noise and the SDE increments.
            labels: ``[n]`` class labels for class-conditional models.
        """
        solver = solver or self.default_solver()
        if self.sigma > 0 and solver != "euler-maruyama":
            raise ConfigError(
                f"this model is a stochastic flow (sigma={self.sigma}); sample it with --solver euler-maruyama"
            )
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"--n must be an integer >= 1, got {n!r}")
        device = self.device
        g = torch.Generator().manual_seed(seed)  # the noise is drawn on the CPU: one seed, the same noise anywhere
        x0 = torch.randn((n, *self.shape), generator=g, device="cpu").to(device)
        cond = self.condition(n)
        if labels is not None:
            if self.num_classes == 0:
                raise ConfigError("this model is not class-conditional; drop the labels")
            y = torch.as_tensor(labels, dtype=torch.long, device=device)
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ConfigError(f"--label must be a class in 0..{self.num_classes - 1} (got {labels!r})")
            cond["y"] = y.expand(n)
        self.model.eval()
        result = integrate(self.model, x0, solver=solver, steps=steps, sigma=self.sigma, cond=cond,
                           return_trajectory=return_trajectory, generator=g)
        if not decode:
            return result
        traj = None
        if result.trajectory is not None:
            flat = self.decode(result.trajectory.flatten(0, 1))
            traj = flat.reshape(*result.trajectory.shape[:2], *flat.shape[1:])
        return SampleResult(x=self.decode(result.x), nfe=result.nfe, times=result.times, trajectory=traj)


def load_run(run_dir: str | Path, *, device: torch.device | str = "cpu") -> Run:
    """Load a run folder by path alone: rebuild the net from ``config.json`` and load its weights onto ``device``
    (whatever device the run trained on: weights are saved from the CPU)."""
    run_dir = Path(run_dir)
    device = torch.device(device)
    device = torch.device("cpu") if device.type == "cpu" else device
    cfg = read_config(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.exists():
        raise RunFolderError(f"{str(run_dir)!r} has no {WEIGHTS_FILE}; the run did not finish - resume or re-run it")
    try:
        with torch.device(device):
            model = build_model(cfg["model"])
        state = load_file(str(weights), device=str(device))
        load_trainable_state_dict(model, state)
        prompt = load_file(str(run_dir / PROMPT_FILE), device=str(device)) \
            if cfg.get("condition", {}).get("kind") == "prompt" else None
    except (RunFolderError, ConfigError):
        raise
    except KeyError as exc:
        raise RunFolderError(f"{run_dir / CONFIG_FILE}: missing field {exc}; re-create the run with this version") from None
    except Exception as exc:
        raise RunFolderError(
            f"{weights}: cannot load the weights ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); the file is damaged - re-run or resume"
        ) from None
    model.eval()
    return Run(model=model, config=cfg, path=run_dir, prompt_embeds=prompt)


def save_adapter(run_dir: Path, model: nn.Module, spec: dict[str, Any], weights: dict[str, Tensor] | None = None,
                 *, kind: str | None = None) -> None:
    """Write the run's LoRA adapter where peft, and for an SD3 run (``kind``) diffusers, look for it.

    ``adapter_model.safetensors`` + ``adapter_config.json`` as ``PeftModel.save_pretrained`` writes them
    (``PeftModel.from_pretrained(network, run_dir)``, or :func:`load_adapter`); for ``kind="diffusers-sd3"``
    also ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights(run_dir)``).  ``spec``: the ``lora``
    entry of the model spec; ``weights``: the adapter tensors to save (default: the model's own).
    """
    tensors = adapter_tensors(model, weights)
    save_weights(run_dir / ADAPTER_WEIGHTS_FILE, peft_state(tensors), metadata={"format": "pt"})
    atomic_write_json(run_dir / ADAPTER_CONFIG_FILE, peft_config(spec))
    if kind == "diffusers-sd3":
        state, header = diffusers_lora_state(tensors, spec, kind)
        save_weights(run_dir / DIFFUSERS_LORA_FILE, state, metadata=header)


def load_adapter(network: nn.Module, run_dir: str | Path) -> nn.Module:
    """Load the peft adapter a LoRA run saved into a base library network (in place), as a peft user would.

    Reads files written before the adapter's keys carried peft's ``base_model.model.`` prefix as well.
    """
    tensors = from_peft_state(load_file(str(Path(run_dir) / ADAPTER_WEIGHTS_FILE)))
    return inject_saved_adapter(network, run_dir, tensors)


def save_prompt_embeds(run_dir: Path, embeds: dict[str, Tensor]) -> None:
    """A text-conditioned run's prompt states (``prompt_embeds.safetensors``; config ``condition``)."""
    save_weights(run_dir / PROMPT_FILE, embeds)
