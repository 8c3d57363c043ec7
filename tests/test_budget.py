"""Every align method counts its budget one way (issue 20): reward calls and model evaluations equal the
closed form of the run's batch size, rollout steps, steps and group size; wall time and peak memory are
reported; the counts reach metrics.jsonl's evaluation records and `final`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowsteer import PretrainConfig, TrainConfig, pretrain
from flowsteer.methods.budget import Budget, method_knob, peak_memory
from flowsteer.methods.configs import AlignConfig
from flowsteer.methods.orw import align

B, K, S, N_RWR = 16, 3, 5, 48  # batch, rollout steps, optimiser steps, RWR's fixed set
DEFAULT_ROLLOUT_SOLVER = AlignConfig.rollout_solver  # the field's default


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "base"
    pretrain(PretrainConfig(data="moons", width=16, train=TrainConfig(steps=2, batch_size=16)), out, progress="quiet")
    return out


def closed_form(method: str, **o) -> tuple[int, int]:
    """(reward calls, model evaluations) of S steps of batch B with K-step rollouts, from the methods' definitions.

    orw-w2 / orw / raft: each step scores B rollouts of K NFE by the lagged policy, then one forward pass of
    the network and one of the reference on B path points.  rwr: N_RWR reference rollouts scored once, then the
    two training passes per step.  nft: as orw (theta_old and theta on the forward process).  flow-grpo: a round
    of B SDE rollouts (K steps) every U updates, scored once; each update recomputes the policy's velocity on
    the W trained steps of the window (W = K without one), and the reference's on them when kl_beta > 0.
    """
    nfe = K * (2 if o.get("rollout_solver", DEFAULT_ROLLOUT_SOLVER) == "heun" else 1)
    if method == "rwr":
        return N_RWR, N_RWR * nfe + S * B * 2
    if method == "flow-grpo":
        rounds = math.ceil(S / o.get("rollout_updates", 2))
        width = o.get("sde_window") or K
        return rounds * B, rounds * B * K + S * width * B * (2 if o.get("kl_beta", 0) > 0 else 1)
    return S * B, S * B * (nfe + 2)


CASES = [
    ("orw-w2", {}), ("orw-w2", {"rollout_solver": "euler"}), ("orw", {}), ("raft", {}), ("rwr", {"rwr_samples": N_RWR}),
    ("nft", {"group_size": 4, "refresh_every": 2}),
    ("flow-grpo", {"group_size": 4}),
    ("flow-grpo", {"group_size": 8, "sde_window": 2, "kl_beta": 0.1, "rollout_updates": 3}),
]


@pytest.mark.parametrize("method, options", CASES, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                          for m, o in CASES])
def test_counts_equal_the_closed_form_and_reach_the_run_folder(method, options, tiny_base, tmp_path):
    cfg = AlignConfig(base=str(tiny_base), reward="target:1.5,0", method=method, rollout_steps=K, eval_every=3,
                      eval_samples=8, eval_steps=2, train=TrainConfig(steps=S, batch_size=B, log_every=5), **options)
    assert cfg.validate() == []
    run = align(cfg, tmp_path / "run", progress="quiet")
    final = run.config["final"]
    calls, evals = closed_form(method, **options)
    assert (final["reward_calls"], final["model_evals"]) == (calls, evals)
    # evaluation records carry the counts so far: at step 0 only RWR's fixed set has been spent
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals_logged = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals_logged] == [0, 3, 5]
    assert evals_logged[0]["reward_calls"] == (N_RWR if method == "rwr" else 0)
    assert (evals_logged[-1]["reward_calls"], evals_logged[-1]["model_evals"]) == (calls, evals)
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["model_evals"] == evals
    # wall time and peak memory, with where the memory was read
    assert final["train_seconds"] > 0 and final["peak_memory_mb"] > 0
    on_cuda = next(run.model.parameters()).device.type == "cuda"
    assert final["peak_memory_source"] == ("torch.cuda.max_memory_allocated" if on_cuda else "process peak RSS (getrusage)")
    # a method without an alpha reports its own knob, not an alpha of 0
    knob, value = method_knob(cfg)
    if knob == "alpha":
        assert "final_alpha" in final
    else:
        assert "final_alpha" not in final and final[knob] == value


def test_budget_resumes_its_counts_and_time():
    b = Budget()
    b.start(torch.device("cpu"))
    b.scored(7), b.forward(7, 3)
    state = b.state_dict()
    assert (state["reward_calls"], state["model_evals"]) == (7, 21) and state["seconds"] >= 0
    c = Budget()
    c.start(torch.device("cpu"))
    c.load_state_dict(state)
    c.scored(1)
    assert c.counts() == {"reward_calls": 8, "model_evals": 21} and c.seconds() >= state["seconds"]
    c.load_state_dict(None)  # a checkpoint from before the budget was counted changes nothing
    assert c.counts()["reward_calls"] == 8


def test_peak_memory_on_the_cpu_is_the_process_rss():
    mb, source = peak_memory(torch.device("cpu"))
    assert source == "process peak RSS (getrusage)" and 10 < mb < 1e6


def test_evaluation_time_is_not_training_time():
    import time

    b = Budget()
    b.start(torch.device("cpu"))
    evaluate = b.evaluating(lambda trainer: (time.sleep(0.3), {"reward_mean": 1.0})[1])
    b.scored(4)
    assert evaluate(None) == {"reward_mean": 1.0, "reward_calls": 4, "model_evals": 0}
    assert b.eval_seconds >= 0.3 and b.seconds() < 0.2
