"""No JSON flowsteer writes holds a bare NaN or Infinity: every writer goes through flowsteer.io.json_text.

``json_text`` writes a value that is not finite as ``null`` ("not measured, or not finite") and refuses
anything else JSON cannot hold; a ``json.dump``/``json.dumps`` call anywhere else in the package would
bypass it, so the source is searched for one.
"""

import ast
import json
import math
from pathlib import Path

from flowsteer.io import atomic_write_json, json_text

PACKAGE = Path(__file__).resolve().parents[1] / "flowsteer"


def _dump_calls(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("dump", "dumps"):
            if isinstance(node.func.value, ast.Name) and node.func.value.id in ("json", "simplejson", "orjson"):
                lines.append(node.lineno)
    return lines


def test_json_is_written_only_through_io_json_text():
    found = {str(p.relative_to(PACKAGE)): _dump_calls(p) for p in PACKAGE.rglob("*.py") if p.name != "io.py"}
    assert {k: v for k, v in found.items() if v} == {}, "write JSON with flowsteer.io.json_text / atomic_write_json"
    assert _dump_calls(PACKAGE / "io.py")  # the search itself finds a call


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in {text!r}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_are_written_as_null(tmp_path):
    record = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": (math.nan,)}}
    assert _strict(json_text(record)) == {"a": None, "b": [None, None, 1.5], "c": {"d": [None]}}
    atomic_write_json(tmp_path / "x.json", record)
    assert _strict((tmp_path / "x.json").read_text())["a"] is None


def test_the_writers_outside_io_go_through_it(tmp_path):
    from flowsteer.model_card import _number
    from flowsteer.models.lora_files import METADATA_KEY, diffusers_lora_state, NETWORK_PREFIX
    from flowsteer.runs import write_config

    assert _number([math.nan, 1.0]) == "[null, 1.0]"
    write_config(tmp_path, {"method": "pretrain", "final": {"reward_mean": math.nan, "w2": math.inf}})
    saved = _strict((tmp_path / "config.json").read_text())
    assert saved["final"] == {"reward_mean": None, "w2": None}
    kind = next(iter(NETWORK_PREFIX))
    _, header = diffusers_lora_state({}, {"r": 2, "lora_alpha": 2.0, "target_modules": ["to_q"]}, kind, metadata=True)
    assert _strict(header[METADATA_KEY])
