"""The bad-input table of docs/bad_inputs.md: every case is run through the CLI here.

Each case must exit non-zero with exactly one stderr line containing its message and no traceback,
and must leave every file that existed before byte-for-byte unchanged (existing runs, outputs,
data).  ``python tests/test_bad_inputs.py`` prints the table with the messages as they are now.

The cases run ``flowsteer.cli.main`` in this process (``conftest.cli``: the same exit status, stdout and
stderr - Python and file-descriptor level - without an interpreter start-up per case);
``test_a_bad_input_through_the_real_entry_point`` runs one case through ``python -m flowsteer``.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, cli, run_cli  # noqa: E402

# (id, what is wrong, argv with {ws} for the workspace, exit status, a fragment of the message)
CASES = [
    ("unknown-data", "an unknown data set name", "pretrain --data nope --out {ws}/new", 2, "unknown data set 'nope'"),
    ("missing-file", "a data file that does not exist", "pretrain --data {ws}/missing.npy --out {ws}/new", 2,
     "does not exist"),
    ("nan-data", "NaN in the data", "pretrain --data {ws}/nan.npy --out {ws}/new", 2, "NaN"),
    ("1d-array", "a 1-D array", "pretrain --data {ws}/flat.npy --out {ws}/new", 2, "1 dimension(s)"),
    ("mixed-images", "images of different sizes in a folder", "pretrain --data {ws}/mixed --out {ws}/new", 2,
     "different sizes"),
    ("out-exists", "--out holds a finished run and --resume is missing", "pretrain --data moons --out {ws}/run", 2,
     "already holds a run"),
    ("resume-nothing", "--resume on a folder with no checkpoint", "pretrain --data moons --out {ws}/empty --resume", 2,
     "no checkpoint to resume from"),
    ("resume-missing-ckpt", "--resume names a checkpoint that does not exist",
     "pretrain --data moons --out {ws}/run --resume checkpoint-7", 2, "no such checkpoint"),
    ("batch-too-big", "--batch-size larger than the data", "pretrain --data {ws}/small.npy --batch-size 64 --out {ws}/new",
     2, "larger than the 36 training samples"),
    ("many-problems", "several bad options at once (all are listed)",
     "align --base {ws}/run --reward target:1,0 --alpha -1 --tau 0 --steps 0 --out {ws}/new", 2, "3 problems:"),
    ("stages-dont-fit", "a GFT stage count that does not fit the steps",
     "adapt --base {ws}/run --target moons --stages 50 --steps 20 --batch-size 32 --out {ws}/new", 2, "stages"),
    ("nfe-zero", "zero solver steps", "sample --model {ws}/run --n 10 --steps 0 --out {ws}/existing.npy", 2,
     "--steps"),
    ("yaml-unknown-key", "a YAML config with an unknown option", "pretrain --config {ws}/bad_key.yaml --out {ws}/new", 2,
     "unknown option(s) colour"),
    ("yaml-syntax", "a YAML config that is not valid YAML", "pretrain --config {ws}/broken.yaml --out {ws}/new", 2,
     "not valid YAML"),
    ("not-a-run", "--model is a folder that is not a run", "sample --model {ws}/mixed --n 10 --out {ws}/existing.npy", 2,
     "not a flowsteer run"),
    ("truncated-weights", "a run whose model.safetensors is truncated",
     "sample --model {ws}/truncated --n 10 --out {ws}/existing.npy", 2, "damaged"),
    ("old-format", "a run folder from an incompatible format version",
     "sample --model {ws}/future --n 10 --out {ws}/existing.npy", 2, "run format 99"),
    ("corrupt-checkpoint", "--resume from a checkpoint whose trainer state is corrupted",
     "pretrain --data moons --steps 400 --out {ws}/corrupt --resume", 2, "cannot read the checkpoint"),
    ("reward-raises", "a reward function that raises",
     "align --base {ws}/run --reward python:{ws}/rewards.py:raising --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "raised ZeroDivisionError"),
    ("reward-wrong-length", "a reward that returns the wrong number of values",
     "align --base {ws}/run --reward python:{ws}/rewards.py:short --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "one number per sample"),
    ("reward-nan", "a reward that returns NaN",
     "align --base {ws}/run --reward python:{ws}/rewards.py:nan --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "--on-bad-reward skip"),
    ("reward-timeout", "a reward slower than --reward-timeout",
     "align --base {ws}/run --reward python:{ws}/rewards.py:slow --quiet --reward-timeout 0.3 --steps 3 --batch-size 16 "
     "--out {ws}/new", 2, "took longer than --reward-timeout"),
    ("unknown-reward", "an unknown reward spec", "align --base {ws}/run --reward nope --out {ws}/new", 2, "nope"),
    ("target-shape", "an adapt target whose dimension differs from the base model's",
     "adapt --base {ws}/run --target digits --out {ws}/new", 2, "shape (1, 8, 8)"),
    ("json-extension", "evaluate --json without .json", "evaluate --model {ws}/run --json {ws}/existing.npy", 2, ".json"),
    ("diffusers-missing", "--base diffusers:DIR where DIR does not exist",
     "align --base diffusers:{ws}/nowhere --reward even-digits --out {ws}/new", 2, "no such folder"),
    ("diffusers-not-a-model", "--base diffusers:DIR on a folder that is no diffusers model",
     "align --base diffusers:{ws}/mixed --reward even-digits --out {ws}/new", 2, "no model_index.json or config.json"),
    ("prompt-on-a-run", "--prompt for a base that is not text-conditioned",
     "align --base {ws}/run --prompt cat --reward target:1,0 --out {ws}/new", 2, "drop it for this base"),
    ("lora-rank-negative", "a negative --lora-rank",
     "align --base {ws}/run --reward target:1,0 --lora-rank -2 --out {ws}/new", 2, "--lora-rank must be >= 0"),
    ("clip-model-missing", "a CLIP reward whose model folder does not exist",
     "align --base {ws}/run --reward clip:a;model={ws}/noclip --out {ws}/new", 2, "cannot load the CLIP model"),
    ("export-not-lora", "export of a run that trained flowsteer's own network", "export {ws}/run --out {ws}/new", 2,
     "flowsteer's own 'mlp' network"),
    ("export-missing-run", "export of a run folder that does not exist", "export {ws}/nowhere --out {ws}/new", 2,
     "does not exist"),
    ("export-out-busy", "export --out that holds other files", "export {ws}/run --out {ws}/mixed", 2,
     "already holds files"),
    ("init-lora-mixed-ranks", "--init-lora whose layers have different ranks",
     "align --base {ws}/run --reward target:1,0 --init-lora {ws}/mixed_ranks.safetensors --out {ws}/new", 2,
     "different ranks (2, 4)"),
    ("init-lora-unknown-key", "--init-lora with a key that is no LoRA weight",
     "align --base {ws}/run --reward target:1,0 --init-lora {ws}/unknown_key.safetensors --out {ws}/new", 2,
     "unknown key 'transformer.transformer_blocks.0.attn.to_q.alpha'"),
    # --- issue 20: flow-grpo and nft
    ("grpo-group-of-one", "flow-grpo with --group-size 1",
     "align --base {ws}/run --reward target:1,0 --method flow-grpo --group-size 1 --out {ws}/new", 2,
     "--group-size must be an integer >= 2 (got 1)"),
    ("grpo-group-too-big", "a --group-size larger than the batch",
     "align --base {ws}/run --reward target:1,0 --method flow-grpo --group-size 128 --batch-size 64 --out {ws}/new", 2,
     "--group-size 128 must divide --batch-size 64"),
    ("grpo-group-not-dividing", "a --group-size that does not divide the batch",
     "align --base {ws}/run --reward target:1,0 --method nft --group-size 12 --batch-size 64 --out {ws}/new", 2,
     "--group-size 12 must divide --batch-size 64"),
    ("grpo-clip-zero", "--clip-range 0", "align --base {ws}/run --reward target:1,0 --method flow-grpo --clip-range 0 "
     "--out {ws}/new", 2, "--clip-range must be a finite number > 0 (got 0.0)"),
    ("grpo-clip-negative", "a negative --clip-range", "align --base {ws}/run --reward target:1,0 --method flow-grpo "
     "--clip-range -0.2 --out {ws}/new", 2, "--clip-range must be a finite number > 0 (got -0.2)"),
    ("grpo-noise-negative", "a negative --sde-noise", "align --base {ws}/run --reward target:1,0 --method flow-grpo "
     "--sde-noise -0.5 --out {ws}/new", 2, "--sde-noise must be a finite number >= 0 (got -0.5)"),
    ("nft-beta-zero", "--nft-beta 0", "align --base {ws}/run --reward target:1,0 --method nft --nft-beta 0 "
     "--out {ws}/new", 2, "--nft-beta must be in (0, 1] (got 0.0)"),
    ("nft-beta-above-one", "--nft-beta above 1", "align --base {ws}/run --reward target:1,0 --method nft --nft-beta 1.5 "
     "--out {ws}/new", 2, "--nft-beta must be in (0, 1] (got 1.5)"),
    ("nft-option-to-orw", "an nft option given to ORW-CFM-W2", "align --base {ws}/run --reward target:1,0 "
     "--nft-beta 0.5 --out {ws}/new", 2, "--nft-beta is an option of --method nft, not orw-w2"),
    ("orw-option-to-grpo", "an ORW option given to flow-grpo", "align --base {ws}/run --reward target:1,0 "
     "--method flow-grpo --tau 2 --out {ws}/new", 2, "--tau is not an option of --method flow-grpo"),
]


def _write_reward_file(path: Path) -> None:
    path.write_text(
        "import time\nimport torch\n\n"
        "def raising(x):\n    return 1 / 0\n\n"
        "def short(x):\n    return x[:-1, 0]\n\n"
        "def nan(x):\n    r = x[:, 0].clone()\n    r[0] = float('nan')\n    return r\n\n"
        "def slow(x):\n    time.sleep(3)\n    return x[:, 0]\n")


def _write_lora_files(ws: Path) -> None:
    """Two diffusers-format LoRA files flowsteer refuses: layers of ranks 4 and 2, and an ``alpha`` tensor."""
    import torch
    from safetensors.torch import save_file

    q, k = "transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k"
    pair = {f"{q}.lora_A.weight": torch.zeros(4, 8), f"{q}.lora_B.weight": torch.zeros(8, 4)}
    save_file({**pair, f"{k}.lora_A.weight": torch.zeros(2, 8), f"{k}.lora_B.weight": torch.zeros(8, 2)},
              str(ws / "mixed_ranks.safetensors"))
    save_file({**pair, f"{q}.alpha": torch.tensor(4.0)}, str(ws / "unknown_key.safetensors"))


def build_workspace(ws: Path, run: Path) -> Path:
    """Everything the cases need: a good run, damaged runs, bad data, config and LoRA files, reward files."""
    from PIL import Image

    ws.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, ws / "run")
    (ws / "empty").mkdir()
    np.save(ws / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]] * 20, dtype=np.float32))
    np.save(ws / "flat.npy", np.arange(50, dtype=np.float32))
    np.save(ws / "small.npy", np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32))
    np.save(ws / "existing.npy", np.ones((3, 2), dtype=np.float32))
    (ws / "mixed").mkdir()
    Image.new("L", (8, 8)).save(ws / "mixed" / "a.png")
    Image.new("L", (9, 9)).save(ws / "mixed" / "b.png")
    (ws / "bad_key.yaml").write_text("data: moons\ncolour: blue\n")
    (ws / "broken.yaml").write_text("data: [moons\n")
    shutil.copytree(run, ws / "truncated")
    weights = (ws / "truncated" / "model.safetensors").read_bytes()
    (ws / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    shutil.copytree(run, ws / "future")
    cfg = json.loads((ws / "future" / "config.json").read_text())
    (ws / "future" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    shutil.copytree(run, ws / "corrupt")
    latest = (ws / "corrupt" / "latest").read_text().strip()
    (ws / "corrupt" / latest / "trainer_state.pt").write_bytes(b"\x80\x02 not a checkpoint")
    _write_reward_file(ws / "rewards.py")
    _write_lora_files(ws)
    return ws


def _digest(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ws.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, moons_run):
    return build_workspace(tmp_path_factory.mktemp("bad") / "ws", moons_run)


def run_case(argv: str, ws: Path, *, subprocess: bool = False):
    return (run_cli if subprocess else cli)(*argv.format(ws=ws).split())


def check_case(case, workspace, *, subprocess: bool = False):
    _, _, argv, status, fragment = case
    before = _digest(workspace)
    proc = run_case(argv, workspace, subprocess=subprocess)
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("flowsteer: error: ") and fragment in lines[0], lines[0]
    after = _digest(workspace)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"existing files changed: {changed}"
    shutil.rmtree(workspace / "new", ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_damages_nothing(case, workspace):
    check_case(case, workspace)


def test_a_bad_input_through_the_real_entry_point(workspace):
    """One case (a bad reward: the command gets as far as training) through ``python -m flowsteer``."""
    check_case(next(c for c in CASES if c[0] == "reward-raises"), workspace, subprocess=True)


def test_the_table_in_the_docs_lists_every_case():
    doc = (ROOT / "docs" / "bad_inputs.md").read_text(encoding="utf-8")
    assert len(CASES) >= 15
    for case_id, _, _, _, fragment in CASES:
        assert f"`{case_id}`" in doc and fragment in doc, case_id


if __name__ == "__main__":  # print the docs table with the messages as they are now
    import tempfile

    from flowsteer import PretrainConfig, TrainConfig, pretrain

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "moons"
        pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=300, log_every=50)), run, progress="quiet")
        ws = build_workspace(Path(tmp) / "ws", run)
        print("| case | input | command | exit | message |\n|---|---|---|---|---|")
        for case_id, what, argv, _, _ in CASES:
            proc = run_case(argv, ws)
            message = proc.stderr.strip().replace(str(ws), "WS").replace("|", "\\|")
            shown = argv.replace("{ws}", "WS").replace("|", "\\|")
            print(f"| `{case_id}` | {what} | `flowsteer {shown}` | {proc.returncode} | {message} |")
            shutil.rmtree(ws / "new", ignore_errors=True)
