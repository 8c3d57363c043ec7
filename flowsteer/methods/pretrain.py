"""Plain conditional flow matching (pretraining).

Per step, with data ``x1`` drawn from the training set, noise ``x0 ~ N(0, I)``,
a coupling ``pi`` of the minibatch, ``t`` from the time sampler and the path::

    L(theta) = mean_i || v_theta(t_i, x_t,i [, y_i]) - target_i ||^2

(the mean runs over the batch and the coordinates).  Labels ``y`` follow the
coupling's indices, so a class-conditional model sees each sample's own label.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..couplings import Coupling, build_coupling
from ..data import DataSplit, load_data
from ..errors import ConfigError
from ..models import build_model, default_model_spec
from ..paths import ProbabilityPath, TimeSampler, build_path
from ..runs import Run
from ..training import StepOutput
from .common import finish_run, fit, run_context, run_device, run_header
from .configs import PretrainConfig

__all__ = ["CFMObjective", "PretrainConfig", "pretrain"]


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
        idx = torch.randint(0, self.x.shape[0], (b,), generator=generator, device=self.x.device)
        x1 = self.x[idx]
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        pairs = self.coupling(x0, x1, generator=generator)
        t = self.time_sampler.sample(b, generator=generator, device=x1.device)
        sample = self.path.sample(pairs.x0, pairs.x1, t, generator=generator)
        cond: dict[str, Tensor] = {}
        if self.conditional:
            y = self.labels[idx][pairs.index1]
            if self.label_dropout > 0:
                drop = torch.rand(b, generator=generator, device=x1.device) < self.label_dropout
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            cond["y"] = y
        pred = model(sample.t, sample.x_t, **cond).float()  # the loss in float32 under autocast
        return StepOutput(loss=((pred - sample.target) ** 2).mean())


def data_problems(config: PretrainConfig, data: DataSplit) -> list[str]:
    """Problems of the settings with this data set (labels for ``conditional``, enough samples for a batch)."""
    p = []
    if config.conditional and data.train.labels is None:
        p.append(f"--conditional needs labelled data, but {config.data!r} has no labels")
    if isinstance(config.train.batch_size, int) and config.train.batch_size > len(data.train):
        p.append(f"--batch-size {config.train.batch_size} is larger than the {len(data.train)} training samples; "
                 "lower --batch-size")
    return p


def pretrain(
    config: PretrainConfig,
    out: str | Path | None,
    *,
    progress: str = "auto",
    resume: bool | str | None = False,
) -> Run:
    """Pretrain a flow model with conditional flow matching.

    Args:
        config: :class:`PretrainConfig`.
        out: run folder to write (None = train in memory only).
        progress: ``auto``, ``bar``, ``log`` or ``quiet``.
        resume: continue from the latest checkpoint in ``out`` (or the ``checkpoint-STEP`` named).

    Returns:
        the trained :class:`~flowsteer.runs.Run` (EMA weights, eval mode).
    """
    problems = config.validate()
    data = load_data(config.data, normalize=config.normalize)
    problems += data_problems(config, data)
    if problems:
        raise ConfigError.listing(problems)
    num_classes = data.train.num_classes if config.conditional else 0
    spec = default_model_spec(config.model, data.train.shape, num_classes=num_classes)
    if config.width is not None:
        if spec["kind"] not in ("mlp", "unet"):
            raise ConfigError(f"--width sizes the built-in networks; drop it with --model {config.model} (its size "
                              "comes from its own config)")
        spec["hidden" if spec["kind"] == "mlp" else "base_channels"] = int(config.width)
    device = run_device(config.train)
    ctx = run_context(config.train, device=device, desc="pretrain", multi_process=False)
    path = build_path(config.sigma)
    with torch.device(device):
        model = build_model(spec)
    labels = data.train.labels.to(device) if data.train.labels is not None else None
    objective = CFMObjective(  # the whole (normalised) training set lives on the device
        data.normalizer.encode(data.train.x).to(device), path=path, coupling=build_coupling(config.coupling),
        time_sampler=TimeSampler(config.time_sampler), batch_size=ctx.train.batch_size, labels=labels,
        conditional=config.conditional, label_dropout=config.label_dropout, num_classes=num_classes,
    )
    data_config = {"spec": config.data, "shape": list(data.train.shape), "num_classes": data.train.num_classes,
                   "n_train": len(data.train), "n_heldout": len(data.heldout), "normalizer": data.normalizer.to_config()}
    run_config = run_header("pretrain", spec, asdict(config), config.train.seed, device=device, data=data_config,
                            path=path.to_config())
    out_dir = Path(out) if out is not None else None
    trainer = fit(model, objective, config.train, generator=ctx.generator, out=out_dir, run_config=run_config,
                  progress=progress, desc="pretrain", resume=resume, dist=ctx.dist)
    return finish_run(trainer, run_config, out_dir, spec=spec, dist=ctx.dist)
