"""benchmarks/baselines.py's stated choice rule (issue 20): each method's best setting is the highest reward among
settings whose diversity clears the task's floor, else the most diverse; a setting that diverged is never chosen.
(The equal reward-call budget is checked on real runs' counts in tests/test_budget.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("baselines_benchmark", ROOT / "benchmarks" / "baselines.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_choice_is_the_best_reward_over_the_floor_else_the_most_diverse():
    task = SimpleNamespace(diversity="class_entropy", floor=1.0)
    rows = [{"reward": 0.99, "class_entropy": 0.2}, {"reward": 0.95, "class_entropy": 1.5},
            {"reward": 0.90, "class_entropy": 2.0}]
    best = bench.choose(rows, task)
    assert best["reward"] == 0.95 and best["cleared_floor"]
    collapsed = [{"reward": 1.0, "class_entropy": 0.1}, {"reward": 0.9, "class_entropy": 0.4}]
    best = bench.choose(collapsed, task)
    assert best["class_entropy"] == 0.4 and not best["cleared_floor"]
    with_diverged = [{"reward": 1.0, "class_entropy": 1.9, "diverged": "stopped at step 9"},
                     {"reward": 0.9, "class_entropy": 1.2}]
    best = bench.choose(with_diverged, task)
    assert best["reward"] == 0.9 and "diverged" not in best
    none_left = bench.choose([{"diverged": "stopped"}], task)
    assert none_left["diverged"] == "every setting diverged" and not none_left["cleared_floor"]
