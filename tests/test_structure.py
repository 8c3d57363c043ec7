"""The code's shape: no import loop (top-level or function-local), module sizes, and the CLI's defaults.

The import graph is read from the source with ``ast`` (every ``import`` and ``from ... import`` statement,
wherever it stands), so a loop hidden behind a function-local import is found too.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flowsteer"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the flowsteer modules it imports (anywhere in its body)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                candidates = _resolve(name, path.name == "__init__.py", node)
            else:
                continue
            targets |= {c for c in candidates if c in files and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules, or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour.get(node) is None and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_loop():
    """The checker itself: a loop through a package's __init__ is found, a chain is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    node = ast.parse("from ..runs import Run").body[0]
    assert _resolve("flowsteer.models.adapters", False, node)[0] == "flowsteer.runs"
    assert _resolve("flowsteer.models", True, ast.parse("from .lora import x").body[0])[0] == "flowsteer.models.lora"


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_layers_point_down():
    """ARCHITECTURE.md: networks never import the run folder, the maths knows no network zoo or Trainer."""
    graph = import_graph()
    maths = ("flowsteer.paths", "flowsteer.couplings", "flowsteer.solvers", "flowsteer.schedules", "flowsteer.metrics",
             "flowsteer.tilt")
    for module in maths:
        assert not {t for t in graph[module] if t.startswith(("flowsteer.models", "flowsteer.training",
                                                              "flowsteer.runs", "flowsteer.methods"))}, module
    for module, targets in graph.items():
        if module.startswith("flowsteer.models"):
            assert not {t for t in targets if t.startswith(("flowsteer.runs", "flowsteer.methods",
                                                             "flowsteer.training"))}, module
    assert "flowsteer.models.lora" not in graph["flowsteer.training"]  # the loop needs no peft module


def test_module_sizes():
    sizes = {p.relative_to(PACKAGE.parent): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes[Path("flowsteer/methods/orw.py")] <= 350
    over = {str(p): n for p, n in sizes.items() if n > MAX_LINES}
    assert not over, over


def test_run_file_names_are_spelled_only_in_runs():
    names = ("config.json", "final_metrics.json", "sweep.json", "evaluation.json", "metrics.jsonl", "trainer_state.pt",
             "adapter_model.safetensors", "adapter_config.json", "pytorch_lora_weights.safetensors",
             "prompt_embeds.safetensors", "summary.json")
    # they read diffusers' and peft's own folders, not run folders (the libraries' names are pinned in test_export)
    other_libraries = ("adapters.py", "lora_files.py")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "runs.py" or path.name in other_libraries:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                pytest.fail(f"{path.name}:{node.lineno} spells {node.value!r}; use the name from flowsteer.runs")


def test_every_cli_default_equals_its_dataclass_default():
    """Walk the generated parser: each option's default is the settings dataclass's (nested ones included)."""
    import argparse

    from flowsteer.cli import COMMANDS, build_parser
    from flowsteer.options import options_of

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, command in COMMANDS.items():
        by_dest = {o.dest: (cls, o) for cls in command.settings for o in options_of(cls)}
        for action in sub.choices[name]._actions:
            if action.dest == "help":
                continue
            root, option = by_dest[action.dest]  # every option comes from a dataclass field
            value = root()  # the command's own settings class, built with its defaults
            for part in option.path:
                value = getattr(value, part)
            assert option.path[-1] in {f.name for f in dataclasses.fields(option.owner)}
            if option.spec.metadata.get("positional"):
                continue
            assert action.default == value, (name, action.dest, action.default, value)
            checked += 1
    assert checked > 100


def test_command_defaults_are_the_method_defaults():
    """align's --steps default is align's (1500), not pretrain's: nested defaults come from the command's config."""
    from flowsteer.cli import parse_args
    from flowsteer.config import RunOutput, align_train_defaults
    from flowsteer.methods.configs import AlignConfig

    parsed = parse_args(["align", "--base", "b", "--reward", "even-digits", "--out", "o"])
    assert parsed[AlignConfig].train == align_train_defaults()
    assert parsed[AlignConfig] == AlignConfig(base="b", reward="even-digits")
    assert parsed[RunOutput].out == "o"
