"""benchmarks/baselines.py's stated rules (issue 20): the same reward-call budget for every method, and the choice
of each method's best setting (highest reward among settings whose diversity clears the task's floor)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("baselines_benchmark", ROOT / "benchmarks" / "baselines.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_every_method_gets_the_same_reward_call_budget():
    for name, (fields, knob, values) in bench.METHODS.items():
        steps = bench.steps_for(fields, 76_800, 256)
        rounds = steps // (2 if fields["method"] == "flow-grpo" else 1)  # flow-grpo scores once per 2 updates
        assert rounds * 256 == 76_800, name
        assert (knob is None) == (name == "orw") and len(values) == (0 if knob is None else 3)


def test_the_choice_is_the_best_reward_over_the_floor_else_the_most_diverse():
    task = SimpleNamespace(diversity="class_entropy", floor=1.0)
    rows = [{"reward": 0.99, "class_entropy": 0.2}, {"reward": 0.95, "class_entropy": 1.5},
            {"reward": 0.90, "class_entropy": 2.0}]
    best = bench.choose(rows, task)
    assert best["reward"] == 0.95 and best["cleared_floor"]
    collapsed = [{"reward": 1.0, "class_entropy": 0.1}, {"reward": 0.9, "class_entropy": 0.4}]
    best = bench.choose(collapsed, task)
    assert best["class_entropy"] == 0.4 and not best["cleared_floor"]
