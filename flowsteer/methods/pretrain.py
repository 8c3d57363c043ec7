"""Plain conditional flow matching (pretraining).

Per step, with data ``x1`` drawn from the training set, noise ``x0 ~ N(0, I)``,
a coupling ``pi`` of the minibatch, ``t`` from the time sampler and the path::

    L(theta) = mean_i || v_theta(t_i, x_t,i [, y_i]) - target_i ||^2

(the mean runs over the batch and the coordinates).  Labels ``y`` follow the
coupling's indices, so a class-conditional model sees each sample's own label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..couplings import Coupling, build_coupling
from ..data import DataSplit, load_data
from ..errors import ConfigError
from ..models import build_model, default_model_spec
from ..paths import ProbabilityPath, TimeSampler, build_path
from ..config import TrainConfig
from ..runs import Run
from ..training import StepOutput, seed_everything
from .common import fit, sampling_copy


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (all saved in ``config.json``).

    Attributes:
        data: data spec (see :func:`flowsteer.data.load_data`).
        model: ``auto`` (MLP), ``mlp`` or ``unet``.
        width: override the hidden width (MLP) or base channels (UNet).
        sigma: 0 = linear path / ODE; > 0 = Brownian bridge / SDE.
        coupling: ``independent``, ``ot`` or ``sinkhorn``.
        time_sampler: ``uniform`` or ``logit-normal``.
        conditional: train a class-conditional model (needs labels).
        label_dropout: share of labels replaced by the null class while
            training a conditional model (so it also samples unconditionally).
        normalize: ``auto``, ``standardize`` or ``none``.
        train: the shared :class:`TrainConfig`.
    """

    data: str = "moons"
    model: str = "auto"
    width: int | None = None
    sigma: float = 0.0
    coupling: str = "independent"
    time_sampler: str = "uniform"
    conditional: bool = False
    label_dropout: float = 0.1
    normalize: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)


class CFMObjective:
    """Conditional flow matching on a fixed training set (model units).

    Args:
        x: ``[N, *D]`` encoded training data.  labels: ``[N]`` or None.
        path, coupling, time_sampler: the flow-matching ingredients.
        batch_size: samples per step.
        conditional: pass labels to the model as ``y``.
        label_dropout: probability of replacing a label by the null class.
    """

    def __init__(
        self,
        x: Tensor,
        *,
        path: ProbabilityPath,
        coupling: Coupling,
        time_sampler: TimeSampler,
        batch_size: int,
        labels: Tensor | None = None,
        conditional: bool = False,
        label_dropout: float = 0.0,
        num_classes: int = 0,
    ) -> None:
        self.x, self.labels = x, labels
        self.path, self.coupling, self.time_sampler = path, coupling, time_sampler
        self.batch_size = batch_size
        self.conditional, self.label_dropout, self.num_classes = conditional, label_dropout, num_classes

    def loss(self, model: nn.Module, *, step: int, generator: torch.Generator) -> StepOutput:
        b = self.batch_size
        idx = torch.randint(0, self.x.shape[0], (b,), generator=generator)
        x1 = self.x[idx]
        x0 = torch.randn(x1.shape, generator=generator)
        pairs = self.coupling(x0, x1, generator=generator)
        t = self.time_sampler.sample(b, generator=generator)
        sample = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        cond: dict[str, Tensor] = {}
        if self.conditional:
            y = self.labels[idx][pairs.index1]
            if self.label_dropout > 0:
                drop = torch.rand(b, generator=generator) < self.label_dropout
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            cond["y"] = y
        pred = model(sample.t, sample.x_t, **cond)
        return StepOutput(loss=((pred - sample.target) ** 2).mean())


def validate(config: PretrainConfig, data: DataSplit) -> None:
    problems = config.train.validate()
    if config.sigma < 0:
        problems.append(f"--sigma must be >= 0 (got {config.sigma})")
    if config.conditional and data.train.labels is None:
        problems.append(f"--conditional needs labelled data, but {config.data!r} has no labels")
    if not 0 <= config.label_dropout < 1:
        problems.append(f"--label-dropout must be in [0, 1) (got {config.label_dropout})")
    if config.coupling != "independent" and config.conditional:
        pass  # labels follow the coupling's indices
    if config.width is not None and config.width < 1:
        problems.append(f"--width must be >= 1 (got {config.width})")
    if isinstance(config.train.batch_size, int) and config.train.batch_size > len(data.train):
        problems.append(f"--batch-size {config.train.batch_size} is larger than the {len(data.train)} training samples; "
                        "lower --batch-size")
    if problems:
        raise ConfigError.listing(problems)


def pretrain(
    config: PretrainConfig,
    out: str | Path | None,
    *,
    progress: str = "auto",
    resume: bool = False,
) -> Run:
    """Pretrain a flow model with conditional flow matching.

    Args:
        config: :class:`PretrainConfig`.
        out: run folder to write (None = train in memory only).
        progress: ``auto``, ``bar``, ``log`` or ``quiet``.
        resume: continue from ``out/trainer_state.pt`` if it exists.

    Returns:
        the trained :class:`~flowsteer.runs.Run` (EMA weights, eval mode).
    """
    data = load_data(config.data, normalize=config.normalize)
    validate(config, data)
    path = build_path(config.sigma)
    coupling = build_coupling(config.coupling)
    time_sampler = TimeSampler(config.time_sampler)
    num_classes = data.train.num_classes if config.conditional else 0
    spec = default_model_spec(config.model, data.train.shape, num_classes=num_classes)
    if config.width is not None:
        if spec["kind"] not in ("mlp", "unet"):
            raise ConfigError(f"--width sizes the built-in networks; drop it with --model {config.model} (its size "
                              "comes from its own config)")
        spec["hidden" if spec["kind"] == "mlp" else "base_channels"] = int(config.width)

    generator = seed_everything(config.train.seed)
    model = build_model(spec)
    objective = CFMObjective(
        data.normalizer.encode(data.train.x), path=path, coupling=coupling, time_sampler=time_sampler,
        batch_size=config.train.batch_size, labels=data.train.labels, conditional=config.conditional,
        label_dropout=config.label_dropout, num_classes=num_classes,
    )
    run_config: dict[str, Any] = {
        "flowsteer_version": __version__,
        "method": "pretrain",
        "model": spec,
        "data": {"spec": config.data, "shape": list(data.train.shape), "num_classes": data.train.num_classes,
                 "n_train": len(data.train), "n_heldout": len(data.heldout), "normalizer": data.normalizer.to_config()},
        "path": path.to_config(),
        "settings": asdict(config),
        "seed": config.train.seed,
    }
    trainer = fit(
        model, objective, config.train, generator=generator, out=Path(out) if out is not None else None,
        run_config=run_config, progress=progress, desc="pretrain", resume=resume,
    )
    return Run(model=sampling_copy(trainer, spec, build_model), config={**run_config, "steps_done": trainer.step},
               path=Path(out) if out is not None else None)
