"""The shared trainer: it learns the closed-form velocity, resumes exactly, and its run folder round-trips."""

import json
import math

import pytest
import torch

from flowsteer import PretrainConfig, TrainConfig, load_run, pretrain
from flowsteer.couplings import IndependentCoupling
from flowsteer.errors import ConfigError, RunFolderError
from flowsteer.methods.pretrain import CFMObjective
from flowsteer.models import MLPVelocity
from flowsteer.paths import LinearPath, TimeSampler
from flowsteer.training import EMA, Trainer


def gaussian_velocity(t, x, m, s):
    """Marginal velocity of the linear path from N(0, 1) to N(m, s^2), independent coupling."""
    var = (1 - t) ** 2 + (t * s) ** 2
    return m + (t * s**2 - (1 - t)) / var * (x - t * m)


def test_cfm_learns_the_closed_form_gaussian_velocity():
    """1-D: p0 = N(0,1), p1 = N(3, 0.5^2); the trained (EMA) field matches the marginal velocity.

    Tolerance 0.1 in absolute velocity (the field's values span about -1..6) on +-2 sd of each marginal.
    """
    m, s = 3.0, 0.5
    torch.manual_seed(0)
    data = m + s * torch.randn(20_000, 1)
    model = MLPVelocity(shape=(1,), hidden=64, depth=2)
    obj = CFMObjective(data, path=LinearPath(), coupling=IndependentCoupling(), time_sampler=TimeSampler(),
                       batch_size=512)
    cfg = TrainConfig(steps=2500, lr=2e-3, warmup_steps=50, ema_decay=0.995, log_every=500)
    trainer = Trainer(model, obj, cfg, generator=torch.Generator().manual_seed(0))
    trainer.fit()
    model.load_state_dict(trainer.sampling_state_dict())
    model.eval()
    errs = []
    with torch.no_grad():
        for t in (0.1, 0.3, 0.5, 0.7, 0.9):
            mean, sd = t * m, math.sqrt((1 - t) ** 2 + (t * s) ** 2)
            x = torch.linspace(mean - 2 * sd, mean + 2 * sd, 21).reshape(-1, 1)
            errs.append((model(torch.full((21,), t), x) - gaussian_velocity(t, x, m, s)).abs().max().item())
    assert max(errs) < 0.1, errs


def test_ema_matches_its_recursion():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, 0.9)
    ref = model.weight.detach().clone()
    for k in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, k)
        d = min(0.9, (1 + k) / (10 + k))
        ref = d * ref + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.shadow["weight"], ref)


def test_resume_is_bitwise_exact(tmp_path):
    cfg = dict(data="moons", train=TrainConfig(steps=40, log_every=10))
    full = pretrain(PretrainConfig(**cfg), tmp_path / "full", progress="quiet")
    half = PretrainConfig(data="moons", train=TrainConfig(steps=20, log_every=10))
    pretrain(half, tmp_path / "split", progress="quiet")
    resumed = pretrain(PretrainConfig(**cfg), tmp_path / "split", progress="quiet", resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    raw_full = torch.load(tmp_path / "full" / "checkpoint-40" / "trainer_state.pt", weights_only=False)["model"]
    raw_res = torch.load(tmp_path / "split" / "checkpoint-40" / "trainer_state.pt", weights_only=False)["model"]
    assert all(torch.equal(raw_full[k], raw_res[k]) for k in raw_full)


def test_run_folder_round_trip_reproduces_outputs(moons_run):
    run = load_run(moons_run)
    files = {p.name for p in moons_run.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "latest", "checkpoint-300"} <= files
    assert (moons_run / "latest").read_text().strip() == "checkpoint-300"
    assert not [f for f in files if f.startswith(".")]  # no temp files left
    cfg = json.loads((moons_run / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["model"]["kind"] == "mlp" and cfg["data"]["shape"] == [2]
    assert cfg["settings"]["train"]["steps"] == 300
    again = load_run(moons_run)
    x, t = torch.randn(16, 2), torch.rand(16)
    with torch.no_grad():
        assert torch.equal(run.model(t, x), again.model(t, x))
    assert torch.equal(run.sample(32, seed=3).x, again.sample(32, seed=3).x)
    records = [json.loads(l) for l in (moons_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200, 250, 300]
    assert records[-1]["loss"] < records[0]["loss"]


def test_same_seed_same_model_different_seed_different(tmp_path):
    a = pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=5)), None, progress="quiet")
    b = pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=5)), None, progress="quiet")
    c = pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=5, seed=1)), None, progress="quiet")
    wa, wb, wc = (r.model.out.weight for r in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_conditional_pretraining_uses_labels():
    run = pretrain(PretrainConfig(data="digits:0,1", conditional=True, train=TrainConfig(steps=5, batch_size=16)),
                   None, progress="quiet")
    assert run.num_classes == 10
    x0 = run.sample(4, labels=torch.tensor(0), steps=2).x
    x1 = run.sample(4, labels=torch.tensor(1), steps=2).x
    assert not torch.equal(x0, x1)


def test_config_validation_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=0, batch_size=-1, lr=-1.0)), None)
    msg = str(err.value)
    assert "--steps" in msg and "--batch-size" in msg and "--lr" in msg


def test_loading_damaged_runs(tmp_path, moons_run):
    import shutil

    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(moons_run, bad)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    with pytest.raises(RunFolderError, match="damaged"):
        load_run(bad)
    cfg = json.loads((moons_run / "config.json").read_text())
    cfg["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunFolderError, match="format 99"):
        load_run(bad)
