"""Rewards are untrusted code: every way one can misbehave gets one line naming it, and nothing else is touched.

One guarded call (``flowsteer.rewards.protocol.score``, and ``classify`` for a reward's classifier) passes
copies, sends prints to stderr and turns each failure into a RewardError line.  Here: each kind of bad
result (unit level), in-place edits (a whole align run, bit for bit), prints under ``evaluate --json -``,
all-NaN rewards in every ``--on-bad-reward`` mode and method, raw weights that underflow, and an align run
whose loss explodes.  The CLI rows of the same categories are in ``tests/test_bad_inputs.py``.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import cli  # noqa: E402
from test_cli import assert_user_error  # noqa: E402

from flowsteer.methods.orw import reward_weights  # noqa: E402
from flowsteer.rewards import RewardError, score  # noqa: E402
from flowsteer.rewards.protocol import classify  # noqa: E402
from flowsteer.step_checks import StepChecks  # noqa: E402
from flowsteer.errors import TrainingStopped  # noqa: E402

N = 8


def _named(fn, name="python:r.py:f"):
    fn.name = name
    return fn


def _exit(code):
    def reward(x):
        sys.exit(code)
    return reward


def _raise(exc):
    def reward(x):
        raise exc
    return reward


# (id, the reward's result or behaviour, a fragment of the one-line message)
BAD_RESULTS = [
    ("none", lambda x: None, "returned None; it must return one number per sample, 8 in all"),
    ("sys-exit", _exit(None), "called sys.exit(None)"),
    ("sys-exit-0", _exit(0), "called sys.exit(0)"),
    ("sys-exit-text", _exit("bye"), "called sys.exit('bye')"),
    ("float64-tensor-overflow", lambda x: torch.full((x.shape[0],), 1e300, dtype=torch.float64),
     "returned values up to 1e+300, beyond float32's range"),
    ("numpy-overflow", lambda x: np.full(x.shape[0], -1e300), "beyond float32's range"),
    ("list-overflow", lambda x: [1e39] * x.shape[0], "beyond float32's range"),
    ("int-beyond-float64", lambda x: [10 ** 400] * x.shape[0], "beyond float32's range"),
    ("meta-tensor", lambda x: torch.empty(x.shape[0], device="meta"), "tensor on the meta device"),
    ("wrong-shape", lambda x: x, "returned shape (8, 2) for 8 samples"),
    ("too-short", lambda x: x[:-1, 0], "returned shape (7,) for 8 samples"),
    ("scalar", lambda x: 1.0, "returned shape () for 8 samples"),
    ("string", lambda x: "high", "returned str, not numbers"),
    ("strings", lambda x: ["a"] * x.shape[0], "returned list, not numbers"),
    ("dict", lambda x: {"r": 1.0}, "returned dict, not numbers"),
    ("ragged", lambda x: [[1.0], [1.0, 2.0]], "not numbers"),
    ("objects", lambda x: [object()] * x.shape[0], "returned list, not numbers"),
    ("complex", lambda x: torch.ones(x.shape[0], dtype=torch.complex64), "returned complex numbers"),
    ("sparse", lambda x: torch.ones(x.shape[0]).to_sparse(), "sparse_coo tensor"),
    ("raises", _raise(ZeroDivisionError("boom")), "raised ZeroDivisionError: boom"),
    ("raises-many-lines", _raise(ValueError("first line\nsecond line")), "raised ValueError: first line second line"),
]


@pytest.mark.parametrize("case", BAD_RESULTS, ids=[c[0] for c in BAD_RESULTS])
def test_every_bad_result_is_one_line_naming_the_reward(case):
    _, fn, fragment = case
    with pytest.raises(RewardError) as info:
        score(_named(fn), torch.zeros(N, 2))
    message = str(info.value)
    assert "\n" not in message and message.startswith("reward 'python:r.py:f' "), message
    assert fragment in message, message


@pytest.mark.parametrize("good", [
    lambda x: x[:, 0].double(),  # float64 within float32's range
    lambda x: x[:, 0].numpy().astype(np.float64).tolist(),
    lambda x: (x[:, 0] > 0),  # booleans are numbers
    lambda x: x[:, :1],  # [B, 1] is read as [B]
    lambda x: torch.full((x.shape[0],), float("nan")),  # NaN is the caller's business (stop or skip)
    lambda x: np.full(x.shape[0], np.inf),
], ids=["float64", "list", "bool", "column", "nan", "inf"])
def test_good_results_are_float32_on_the_samples_device(good):
    r = score(_named(good), torch.randn(N, 2))
    assert r.dtype == torch.float32 and r.shape == (N,) and r.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_a_tensor_on_another_real_device_is_moved():
    r = score(_named(lambda x: x[:, 0].cuda()), torch.randn(N, 2))
    assert r.device == torch.device("cpu")


def test_keyboard_interrupt_is_not_swallowed():
    with pytest.raises(KeyboardInterrupt):
        score(_named(_raise(KeyboardInterrupt())), torch.zeros(N, 2))


@pytest.mark.parametrize("edit", ["mul", "nan", "resize", "cond"])
def test_a_reward_that_edits_its_input_in_place_changes_nothing_outside(edit):
    x, y = torch.randn(N, 2), torch.arange(N)
    x0, y0 = x.clone(), y.clone()

    def vandal(s, **cond):
        r = s[:, 0].clone()
        {"mul": lambda: s.mul_(0), "nan": lambda: s.fill_(float("nan")), "resize": lambda: s.resize_(0),
         "cond": lambda: cond["y"].zero_()}[edit]()
        return r

    torch.testing.assert_close(score(_named(vandal), x, {"y": y}), x0[:, 0])
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_classify_is_guarded_too():
    x = torch.randn(N, 2)
    x0 = x.clone()

    class R:
        name, num_classes = "python:r.py:f", 3

        def __call__(self, s):
            return s[:, 0]

        def classify(self, s):
            s.mul_(0)
            return torch.full((s.shape[0],), 7)

    with pytest.raises(RewardError, match=r"'s classify returned values outside the class indices 0..2"):
        classify(R(), x)
    assert torch.equal(x, x0)
    R.classify = lambda self, s: None
    with pytest.raises(RewardError, match="'s classify returned None"):
        classify(R(), x)


def test_torch_state_a_reward_changes_comes_back():
    def rude(x):
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        return x[:, 0]

    score(_named(rude), torch.zeros(N, 2))
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


# --------------------------------------------------------------------------- whole runs

REWARDS = '''
import os
import sys

import torch

A = torch.tensor([1.5, 0.0])


def honest(x):
    return -((x - A) ** 2).sum(1)


def _zero(x):
    return torch.zeros(x.shape[0], dtype=torch.long)


def mul(x):
    r = honest(x)
    x.mul_(0)
    return r


def nan(x):
    r = honest(x)
    x[:] = float("nan")
    return r


for f in (honest, mul, nan):
    f.num_classes = 2
honest.classify = _zero
mul.classify = lambda x: _zero(x.mul_(0))
nan.classify = lambda x: _zero(x.fill_(float("nan")))


def all_nan(x):
    return torch.full((x.shape[0],), float("nan"))


def all_inf(x):
    return torch.where(x[:, 0] > 0, float("inf"), -float("inf"))


def very_low(x):
    return torch.full((x.shape[0],), -1000.0)
'''


NOISY = '''
import os
import sys

print("printed while importing")


def noisy(x):
    print("printed by the reward")
    sys.stdout.flush()
    os.system("echo printed by a child process")
    return -(x ** 2).sum(1)
'''


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrusted")
    (folder / "noisy.py").write_text(NOISY)
    (folder / "r.py").write_text(REWARDS)
    return folder / "r.py"


def _align(base, reward, out, *extra):
    return cli("align", "--base", str(base), "--reward", reward, "--out", str(out), "--steps", "12",
               "--batch-size", "32", "--eval-every", "6", "--eval-samples", "64", "--log-every", "2", "--quiet", *extra)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("vandal", ["mul", "nan"])
def test_a_reward_that_edits_its_samples_leaves_training_and_metrics_unchanged(vandal, moons_run, rewards, tmp_path):
    """x.mul_(0) / x[:] = nan in the reward and in its classify: the run is bit for bit the honest one."""
    honest = _align(moons_run, f"python:{rewards}:honest", tmp_path / "honest")
    edited = _align(moons_run, f"python:{rewards}:{vandal}", tmp_path / "edited")
    assert honest.returncode == 0 and edited.returncode == 0, (honest.stderr, edited.stderr)
    assert _digest(tmp_path / "honest" / "model.safetensors") == _digest(tmp_path / "edited" / "model.safetensors")
    a, b = _records(tmp_path / "honest"), _records(tmp_path / "edited")
    assert a == b and any(r["kind"] == "eval" and "pairwise_distance" in r for r in a)
    final = json.loads((tmp_path / "edited" / "final_metrics.json").read_text())
    assert final["class_histogram"] == [1.0, 0.0]


def test_a_rewards_prints_go_to_stderr_when_stdout_carries_json(moons_run, rewards):
    noisy = f"python:{rewards.with_name('noisy.py')}:noisy"
    proc = cli("evaluate", "--model", str(moons_run), "--reward", noisy, "--n", "16", "--nfe", "2", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # nothing else on stdout
    assert "reward_mean" in result["metrics"]
    for text in ("printed while importing", "printed by the reward", "printed by a child process"):
        assert text in proc.stderr and text not in proc.stdout


@pytest.mark.parametrize("extra", [
    ("--on-bad-reward", "stop"),
    ("--on-bad-reward", "skip"),
    ("--on-bad-reward", "skip", "--method", "rwr", "--rwr-samples", "64"),
    ("--on-bad-reward", "skip", "--method", "raft"),
    ("--on-bad-reward", "skip", "--weights", "none"),
], ids=["stop", "skip", "skip-rwr", "skip-raft", "skip-raw-weights"])
@pytest.mark.parametrize("fn", ["all_nan", "all_inf"])
def test_rewards_that_are_all_non_finite_stop_with_the_reward_message(fn, extra, moons_run, rewards, tmp_path):
    proc = _align(moons_run, f"python:{rewards}:{fn}", tmp_path / "run", *extra)
    assert_user_error(proc, f"reward 'python:{rewards}:{fn}' returned NaN or inf for all")


def test_all_non_finite_rewards_in_evaluate_are_one_line(moons_run, rewards):
    proc = cli("evaluate", "--model", str(moons_run), "--reward", f"python:{rewards}:all_nan", "--n", "16",
               "--nfe", "2", "--json", "-")
    assert_user_error(proc, "returned NaN or inf for all 16 samples; fix the reward")
    assert proc.stdout == ""


def test_raw_weights_that_underflow_for_every_sample_are_an_error(moons_run, rewards, tmp_path):
    proc = _align(moons_run, f"python:{rewards}:very_low", tmp_path / "run", "--weights", "none")
    assert_user_error(proc, f"reward 'python:{rewards}:very_low' at step 0: raw weights exp(tau*r) underflowed to 0")
    # the same rewards with normalised weights train (only differences matter to them)
    assert _align(moons_run, f"python:{rewards}:very_low", tmp_path / "mean").returncode == 0


def test_raw_weight_checks_at_unit_level():
    with pytest.raises(RewardError, match="underflowed to 0 for every sample"):
        reward_weights(torch.tensor([-300.0, -400.0]), tau=1.0, normalize="none")
    w = reward_weights(torch.tensor([-300.0, 0.0]), tau=1.0, normalize="none")  # some underflow: fine
    assert w.tolist() == [0.0, 1.0]
    with pytest.raises(RewardError, match="overflowed"):
        reward_weights(torch.tensor([1000.0, 0.0]), tau=1.0, normalize="none")


# --------------------------------------------------------------------------- divergence


def test_an_align_run_whose_loss_explodes_stops_like_pretrain(moons_run, tmp_path):
    out = tmp_path / "run"
    proc = cli("align", "--base", str(moons_run), "--reward", "target:1.5,0", "--lr", "10", "--steps", "200",
               "--batch-size", "64", "--eval-every", "0", "--eval-samples", "32", "--quiet", "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the loss diverged" in lines[0] and "lower --lr" in lines[0], lines[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["in_a_row"] for r in records if r["kind"] == "diverging"][-5:] == [1, 2, 3, 4, 5]


def test_a_healthy_run_with_raw_weights_never_counts_a_diverging_step(moons_run, tmp_path):
    """Raw weights exp(tau r) grow by orders of magnitude as the reward improves (here the loss by over 10^4):
    that is no divergence - the check watches the loss with the weights' mean divided out."""
    proc = _align(moons_run, "target:3,0", tmp_path / "run", "--weights", "none", "--tau", "10", "--lr", "1e-2",
                  "--refresh-every", "5", "--steps", "100")
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path / "run")
    assert not [r for r in records if r["kind"] in ("diverging", "skip")]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert max(losses) > 1e3 * losses[0]  # the raw loss did move a lot


def test_divergence_counts_in_a_row_and_resumes():
    checks = StepChecks(3)
    for step, value in enumerate([2.0, 1.0, 3e4, 0.5, 2e4, 2e4]):  # 10^4 x the first value (2.0) is the limit
        checks.add(step, torch.tensor(value), torch.tensor(1.0), torch.tensor(value))
    checks.settle(None, None)
    assert checks.in_row == 0 and checks.loss_start == 2.0
    checks.add(6, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(3e4))
    checks.add(7, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(3e4))
    checks.settle(None, None)
    assert checks.in_row == 2
    resumed = StepChecks(3)
    resumed.load_state_dict(checks.state_dict())
    resumed.add(8, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(float("inf")))  # a monitor that overflowed
    with pytest.raises(TrainingStopped, match="step 8: the loss diverged"):
        resumed.settle(None, None)
