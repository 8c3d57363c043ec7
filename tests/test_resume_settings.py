"""``--resume`` continues a run with its saved settings: options left out come from its config.json.

A run with a non-default --lr, --width and --steps, interrupted and resumed with only ``--out`` and
``--resume``, ends bitwise equal to the uninterrupted run (pretrain, and align with --lr/--tau/--steps).
An option that may change on resume is applied from the checkpoint on and recorded; one that fixes the
network, the data or restored state is refused in one line naming the option, the saved value and the fix.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from flowsteer.runs import OWNER_FILE
import torch
from safetensors.torch import load_file

from conftest import cli
from flowsteer.errors import ConfigError
from flowsteer.methods.configs import AdaptConfig, AlignConfig, PretrainConfig
from flowsteer.resume import resume_changes, settings_fields
from flowsteer.runs import write_config
from flowsteer.training import Trainer

PRETRAIN = ["pretrain", "--data", "moons", "--lr", "5e-4", "--width", "32", "--steps", "60", "--batch-size", "64",
            "--warmup-steps", "5", "--checkpoint-every", "20", "--log-every", "10", "--quiet"]


def interrupt_at(monkeypatch, step: int) -> None:
    """A test hook: the Trainer acts as if SIGINT arrived during the step that ends at ``step`` (it checkpoints
    there and stops, as on Ctrl-C)."""
    original = Trainer._step

    def stepping(self, params):
        if self.step == step - 1:
            self._stops.received = 2  # SIGINT, as the handler records it (flowsteer.interrupts.StopSignals)
        return original(self, params)
    monkeypatch.setattr(Trainer, "_step", stepping)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "sampling weights differ"
    steps = json.loads((a / "config.json").read_text())["steps_done"]
    ra = torch.load(a / f"checkpoint-{steps}" / "trainer_state.pt", weights_only=False)["model"]
    rb = torch.load(b / f"checkpoint-{steps}" / "trainer_state.pt", weights_only=False)["model"]
    assert all(torch.equal(ra[k], rb[k]) for k in ra), "raw weights differ"


def whole_and_resumed(cmd: list[str], tmp_path: Path, monkeypatch, *, at: int) -> tuple[Path, Path]:
    """``cmd`` run whole into ``tmp_path/whole``, and into ``tmp_path/run`` interrupted at step ``at`` (exit 130)
    and then resumed with only ``--out`` and ``--resume``; returns the two run folders."""
    whole, out = tmp_path / "whole", tmp_path / "run"
    assert cli(*cmd, "--out", str(whole)).returncode == 0
    with monkeypatch.context() as m:
        interrupt_at(m, at)
        assert cli(*cmd, "--out", str(out)).returncode == 130
    proc = cli(cmd[0], "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    return whole, out


def settings(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["settings"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The uninterrupted pretrain run of PRETRAIN."""
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = cli(*PRETRAIN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_pretrain_resumed_with_only_out_and_resume_is_bitwise_exact(pretrained, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 25)
        proc = cli(*PRETRAIN, "--out", str(out))
    assert proc.returncode == 130 and "interrupted by SIGINT at step 25" in proc.stderr, proc.stderr
    assert (out / "latest").read_text().strip() == "checkpoint-25"
    proc = cli("pretrain", "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "->" not in proc.stderr  # nothing changed, so no notice
    same_weights(pretrained, out)
    assert settings(out) == settings(pretrained)
    assert settings(out)["width"] == 32 and settings(out)["train"]["lr"] == 5e-4


def test_align_resumed_with_only_out_and_resume_is_bitwise_exact(moons_run, tmp_path, monkeypatch):
    cmd = ["align", "--base", str(moons_run), "--reward", "target:1.5,0.0", "--lr", "5e-4", "--tau", "2", "--steps",
           "30", "--batch-size", "32", "--refresh-every", "5", "--eval-every", "0", "--eval-samples", "16",
           "--checkpoint-every", "10", "--quiet"]
    whole, out = whole_and_resumed(cmd, tmp_path, monkeypatch, at=13)
    same_weights(whole, out)
    assert settings(out) == settings(whole) and settings(out)["tau"] == 2.0


def test_a_changed_option_that_may_change_is_applied_and_recorded(pretrained, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    proc = cli("pretrain", "--out", str(out), "--resume", "--lr", "2e-4", "--steps", "80", "--width", "32",
               "--progress", "log")
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "->" in line]
    assert notices == ["--resume: --steps 60 -> 80 (applied from step 60 on and recorded in config.json)",
                       "--resume: --lr 0.0005 -> 0.0002 (applied from step 60 on and recorded in config.json)"], \
        proc.stderr
    saved = settings(out)
    assert saved["train"]["lr"] == 2e-4 and saved["train"]["steps"] == 80 and saved["width"] == 32
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    resume = [r for r in records if r["kind"] == "resume"]
    assert resume == [{"step": 60, "kind": "resume", "checkpoint": "checkpoint-60",
                       "changed": {"--steps": {"from": 60, "to": 80}, "--lr": {"from": 5e-4, "to": 2e-4}}}]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[60] == 5e-4 and lrs[70] == 2e-4 and lrs[80] == 2e-4  # the optimiser really uses the new lr
    assert json.loads((out / "config.json").read_text())["steps_done"] == 80


def _fake_run(folder: Path, method: str, config) -> Path:
    """A run folder's config.json alone: enough for the checks made before any work."""
    folder.mkdir(parents=True)
    values = asdict(config)
    if method == "adapt":
        values["eval_nfes"] = list(config.eval_nfes)
    write_config(folder, {"method": method, "model": {"kind": "mlp"}, "settings": values, "seed": 0,
                          "steps_done": 20})
    (folder / OWNER_FILE).write_text(json.dumps({"kind": method}))  # made by that command (flowsteer.ownership)
    (folder / "checkpoint-20").mkdir()  # and it reached a checkpoint (the refusals come before it is read)
    return folder


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


REFUSED = [
    ("pretrain", "--width", "64", "32"), ("pretrain", "--data", "circles", "moons"), ("pretrain", "--sigma", "0.1", "0.0"),
    ("pretrain", "--seed", "1", "0"), ("pretrain", "--model", "unet", "auto"), ("pretrain", "--ema-decay", "0.9", "0.999"),
    ("pretrain", "--weight-decay", "0.01", "0.0"), ("pretrain", "--conditional", None, "False"),
    ("pretrain", "--coupling", "ot", "independent"),
    ("align", "--reward", "even-digits", "target:1,0"), ("align", "--method", "rwr", "orw-w2"),
    ("align", "--alpha", "0.5", "0.15"), ("align", "--lora-rank", "4", "0"), ("align", "--base", "other", "base"),
    ("align", "--w2-budget", "0.1", "none"),
    ("adapt", "--steps", "100", "2000"), ("adapt", "--target", "circles", "moons"), ("adapt", "--stages", "2", "4"),
    ("adapt", "--no-divide", None, "True"),
]


@pytest.mark.parametrize("command,flag,value,saved", REFUSED, ids=[f"{c}{f}" for c, f, _, _ in REFUSED])
def test_an_option_that_fixes_the_run_is_refused_in_one_line(command, flag, value, saved, tmp_path):
    config = {"pretrain": PretrainConfig(data="moons", width=32), "align": AlignConfig(base="base", reward="target:1,0"),
              "adapt": AdaptConfig(base="base", target="moons")}[command]
    run = _fake_run(tmp_path / "run", command, config)
    before = _digest(tmp_path)
    proc = cli(command, "--out", str(run), "--resume", flag, *([value] if value is not None else []))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"flowsteer: error: --resume: {flag} "), lines[0]
    assert f"the run's saved value ({saved}" in lines[0] and f"drop {flag} to keep" in lines[0], lines[0]
    assert _digest(tmp_path) == before


def test_the_same_value_given_again_is_no_change(tmp_path):
    run = _fake_run(tmp_path / "run", "pretrain", PretrainConfig(data="moons", width=32))
    proc = cli("pretrain", "--out", str(run), "--resume", "--width", "32", "--data", "moons")
    assert "differs" not in proc.stderr and "--width" not in proc.stderr, proc.stderr  # (it has no checkpoint)


def test_resume_of_another_kind_of_run_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run", "pretrain", PretrainConfig(data="moons"))
    proc = cli("align", "--out", str(run), "--resume")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "holds a pretrain run of flowsteer, not an align run" in proc.stderr  # flowsteer.ownership speaks first
    assert "--resume" not in proc.stderr.split(";", 1)[1]  # and its advice is safe to follow


def test_steps_below_the_checkpoint_are_refused(pretrained, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    before = _digest(out)
    proc = cli("pretrain", "--out", str(out), "--resume", "--steps", "50")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "checkpoint-60 is at step 60, past --steps 50; give --steps 60 or more" in proc.stderr
    assert _digest(out) == before


def test_the_python_api_refuses_too(pretrained, tmp_path):
    import shutil

    from flowsteer import TrainConfig, pretrain

    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    config = PretrainConfig(data="moons", width=64, train=TrainConfig(**settings(out)["train"]))
    with pytest.raises(ConfigError, match=r"--resume: --width 64 differs from the run's saved value \(32\)"):
        pretrain(config, out, progress="quiet", resume=True)


def test_every_resume_policy_is_declared():
    """Every settings field says apply or refuse; the optimisation settings apply, the shape ones refuse."""
    for cls in (PretrainConfig, AlignConfig, AdaptConfig):
        policies = {name: f.metadata["on_resume"] for name, f in settings_fields(cls).items()}
        assert set(policies.values()) <= {"apply", "refuse"}
        assert policies["lr"] == policies["batch_size"] == policies["steps"] == policies["lr_schedule"] == "apply"
        assert policies["seed"] == "refuse"
    changes = resume_changes("adapt", {"train": {"steps": 10}}, {"train": {"steps": 20}})
    assert [(c.flag, c.apply) for c in changes] == [("--steps", False)]


def test_damaged_saved_settings_are_one_line(tmp_path):
    run = _fake_run(tmp_path / "run", "pretrain", PretrainConfig(data="moons"))
    text = (run / "config.json").read_text().replace('"lr": 0.001', '"lr": NaN')
    assert "NaN" in text
    (run / "config.json").write_text(text)
    proc = cli("pretrain", "--out", str(run), "--resume")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--resume:" in lines[0] and "config.json" in lines[0] and "'lr'" in lines[0] and "damaged" in lines[0]


def test_resume_without_a_saved_run_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("pretrain", "--out", str(tmp_path / "empty"), "--resume")
    assert proc.returncode == 2 and "missing --data" in proc.stderr and "--resume restores" in proc.stderr


def test_a_config_switch_set_to_its_default_is_not_dropped_on_resume(moons_run, tmp_path):
    """``standardize_reward: false`` in a --config gives no token (false is the switch's default), but it is the
    user's explicit choice: resuming a run saved with the switch on must refuse it, not quietly keep true."""
    out = tmp_path / "run"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1,0", "--standardize-reward", "--steps", "4",
               "--batch-size", "16", "--eval-every", "0", "--eval-samples", "8", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    before = (out / "config.json").read_bytes()
    (tmp_path / "off.yaml").write_text("standardize_reward: false\nsteps: 6\n")
    proc = cli("align", "--out", str(out), "--resume", "--config", str(tmp_path / "off.yaml"), "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--standardize-reward False differs from the run's saved value (True)" in proc.stderr
    assert (out / "config.json").read_bytes() == before
    (tmp_path / "on.yaml").write_text("standardize_reward: true\nsteps: 6\n")  # the saved value itself: resumes
    proc = cli("align", "--out", str(out), "--resume", "--config", str(tmp_path / "on.yaml"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert settings(out)["standardize_reward"] is True and settings(out)["train"]["steps"] == 6
