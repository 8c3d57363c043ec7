"""benchmarks/run_reuse.py: a benchmark reuses a run folder only when the folder's config records the job's options."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_reuse", ROOT / "benchmarks" / "run_reuse.py")
run_reuse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_reuse)


def saved_run(folder: Path, base: Path, *, steps_done: int = 1000, closed: bool = True) -> Path:
    folder.mkdir(parents=True)
    settings = {"base": str(base), "reward": "even-mnist", "alpha": 0.15, "method": "orw-w2", "w2_budget": None,
                "target_beta": 0.02, "tau": 12.5, "misaligned_weights": False,
                "train": {"steps": 1000, "batch_size": 64, "seed": 0}}
    (folder / "config.json").write_text(json.dumps({"settings": settings, "steps_done": steps_done}))
    if closed:
        (folder / "final_metrics.json").write_text("{}")
    return folder


def test_the_same_options_reuse_the_run(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "link").symlink_to(base)  # the same base named through a link is the same base
    run = saved_run(tmp_path / "run", tmp_path / "link")
    args = ["--base", str(base), "--reward", "even-mnist", "--alpha", "0.150", "--tau", "12.5", "--steps", "1000",
            "--batch-size=64", "--seed", "0", "--target-beta", "2e-2", "--out", "elsewhere", "--quiet"]
    assert run_reuse.reuse_problems(run, args) == []
    assert run_reuse.finished(run)


def test_each_differing_or_unrecorded_option_is_named(tmp_path):
    run = saved_run(tmp_path / "run", tmp_path / "base")
    args = ["--base", str(tmp_path / "other"), "--reward", "odd-mnist", "--alpha", "0.1", "--steps", "2000",
            "--w2-budget", "0.2", "--misaligned-weights", "--new-knob", "3"]
    problems = run_reuse.reuse_problems(run, args)
    assert [p.split()[0] for p in problems] == ["--base", "--reward", "--alpha", "--steps", "--w2-budget",
                                               "--misaligned-weights", "--new-knob"]
    assert problems[-1] == "--new-knob is not recorded"
    assert "was 0.15, the job gives '0.1'" in problems[2]


def test_an_unfinished_or_unreadable_run_is_neither_finished_nor_reusable(tmp_path):
    assert not run_reuse.finished(saved_run(tmp_path / "short", tmp_path, steps_done=500))
    assert not run_reuse.finished(saved_run(tmp_path / "open", tmp_path, closed=False))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert not run_reuse.finished(tmp_path / "broken")
    assert run_reuse.reuse_problems(tmp_path / "broken", ["--alpha", "0"]) == [
        f"{tmp_path / 'broken'}/config.json cannot be read"]


def test_a_finished_pretrain_run_is_one_with_its_weights(tmp_path):
    """A pretrain run writes no final_metrics.json (session 4's MNIST benchmark then tried to pretrain its base
    again, into the base's own folder); its weights file marks the end instead."""
    run = tmp_path / "base"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "pretrain", "steps_done": 2800,
                                                 "settings": {"train": {"steps": 2800}}}))
    assert not run_reuse.finished(run)
    (run / "model.safetensors").write_bytes(b"")
    assert run_reuse.finished(run)
