"""Theorem 2 of ORW-CFM-W2 (alpha = 0): after N refreshes, q_N ~ q_0 exp(N tau r).

Base q_0: the mixture 0.5 N((-1.5, 0), 0.25 I) + 0.5 N((1.5, 0), 0.25 I); reward r = -||x - a||^2 with
a = (0, 1), equidistant from both components, so the closed form keeps the weights equal while each
component shrinks and shifts (METHODS.md section 2):

    S = (Sigma^-1 + 2 c I)^-1,  m_k = S (Sigma^-1 mu_k + 2 c a),  weight_k ~ pi_k N(a; mu_k, Sigma + I/(2c)),  c = N tau.

"Perfect learning" is approximated by refresh periods long enough to fit (K = 1200 steps, batch 512):
shorter periods (400) leave each fit a few percent off and the errors compound over refreshes.
Tolerance (issue 3): means within 10 % of the marginal standard deviation, each variance within 10 %.
Measured here: worst variance error 8.1 % (var_x at N = 3), of which about 3.5 % is the pretrained
base's own error amplified by the tilt.  (With torch 2.13 + MKL 2024.2 on an AVX-512 CPU, 2 threads and
1 thread both give 9.99 % (var_y, N = 2) - as docs/results.md's 10.0 % - a hair inside the tolerance.)
About 2 minutes on an idle 2-core machine (two torch threads); beside another busy process the two threads
wait on each other at every parallel region and it takes 7 to 15 minutes, so `make test` runs it last and
alone (tests/conftest.py: the order of the work and the `alone_on_the_machine` fixture). The chain pretrain
-> refresh 1 -> 2 -> 3 is sequential (each refresh fits the samples of the previous model), so splitting it
into tests per N would repeat the earlier refreshes without shortening the longest one.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from flowsteer import PretrainConfig, TrainConfig, pretrain
from flowsteer.methods.orw import AlignConfig, RewardWeightedObjective
from flowsteer.models import build_model
from flowsteer.solvers import integrate
from flowsteer.training import Trainer, seed_everything

PI = np.array([0.5, 0.5])
MU = np.array([[-1.5, 0.0], [1.5, 0.0]])
VAR = 0.25
A = np.array([0.0, 1.0])
TAU, K = 0.3, 1200


def tilted_moments(c: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of q_0 exp(c r) for the mixture above (closed form)."""
    comps, logw = [], []
    for k in range(len(PI)):
        S = np.linalg.inv(np.eye(2) / VAR + 2 * c * np.eye(2))
        m = S @ (MU[k] / VAR + 2 * c * A)
        v = VAR + 1 / (2 * c)
        comps.append((m, S))
        logw.append(math.log(PI[k]) - ((A - MU[k]) ** 2).sum() / (2 * v))
    w = np.exp(np.array(logw) - max(logw))
    w /= w.sum()
    mean = sum(w[k] * comps[k][0] for k in range(len(PI)))
    second = sum(w[k] * (comps[k][1] + np.outer(comps[k][0], comps[k][0])) for k in range(len(PI)))
    return mean, second - np.outer(mean, mean)


def test_closed_form_helper_limits():
    """c -> 0 gives back q_0's moments; large c concentrates on a (the argmax of r, Lemma 1)."""
    m, c = tilted_moments(1e-9)
    np.testing.assert_allclose(m, [0, 0], atol=1e-6)
    np.testing.assert_allclose(c, np.diag([1.5**2 + VAR, VAR]), rtol=1e-6)
    m, c = tilted_moments(1e4)
    np.testing.assert_allclose(m, A, atol=1e-3)
    assert np.trace(c) < 1e-3


def record_figures(results: dict) -> None:
    """With FLOWSTEER_RESULTS_DIR set (``make reproduce``), write the measured and closed-form moments as JSON."""
    folder = os.environ.get("FLOWSTEER_RESULTS_DIR")
    if not folder:
        return
    rows = []
    for n, xs in sorted(results.items()):
        mean, cov = tilted_moments(n * TAU)
        sd, var = np.sqrt(np.diag(cov)), np.diag(cov)
        emp_var = np.diag(np.cov(xs.T))
        rows.append({"refreshes": n, "c": n * TAU, "mean": xs.mean(0).tolist(), "mean_closed_form": mean.tolist(),
                     "mean_error_in_sd": (np.abs(xs.mean(0) - mean) / sd).tolist(), "var": emp_var.tolist(),
                     "var_closed_form": var.tolist(), "var_rel_error": (np.abs(emp_var - var) / var).tolist()})
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "theorem2.json").write_text(json.dumps({"tau": TAU, "K": K, "rows": rows}, indent=2))


def test_theorem2_tilt_after_1_2_3_refreshes(tmp_path, alone_on_the_machine):
    # Two torch threads, as when the figures in the docstring were measured: the float reduction order
    # changes with the thread count, and with one thread the worst variance error was 9.99 % (var_y, N = 2).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _theorem2(tmp_path)
    finally:
        torch.set_num_threads(threads)


def pretrained_mixture(folder: Path):
    """q_0: 20,000 samples of the mixture (seed 0) in FOLDER/mix.npy, and a base pretrained on them in FOLDER/base."""
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 2, 20_000)
    x = (MU[comp] + math.sqrt(VAR) * rng.standard_normal((20_000, 2))).astype(np.float32)
    np.save(folder / "mix.npy", x)
    return pretrain(PretrainConfig(data=str(folder / "mix.npy"),
                                   train=TrainConfig(steps=2000, batch_size=512, lr=1e-3)), folder / "base",
                    progress="quiet")


def _theorem2(tmp_path):
    base = pretrained_mixture(tmp_path)
    reward = lambda x: -((x - torch.tensor(A, dtype=x.dtype)) ** 2).sum(1)
    train = TrainConfig(steps=3 * K, batch_size=512, lr=1e-3, warmup_steps=20, ema_decay=0.0, log_every=K)
    cfg = AlignConfig(base=str(tmp_path / "base"), reward=reward, method="orw", tau=TAU, refresh_every=K,
                      rollout_solver="heun", rollout_steps=6, train=train)
    g = seed_everything(0)
    model = build_model(base.config["model"])
    model.load_state_dict(base.model.state_dict())
    objective = RewardWeightedObjective(reference=base.model, reward=reward, config=cfg, decode=base.normalizer.decode,
                                        shape=(2,), sigma=0.0, generator=g)
    results = {}

    def evaluate(trainer):
        if trainer.step and trainer.step % K == 0:
            z = integrate(trainer.model, torch.randn(4000, 2, generator=torch.Generator().manual_seed(5)),
                          solver="heun", steps=50).x
            results[trainer.step // K] = base.normalizer.decode(z).numpy()
        return {}

    Trainer(model, objective, train, generator=g, evaluate=evaluate, eval_every=K).fit()
    assert sorted(results) == [1, 2, 3]
    record_figures(results)
    for n, xs in results.items():
        mean, cov = tilted_moments(n * TAU)
        sd = np.sqrt(np.diag(cov))
        emp_cov = np.cov(xs.T)
        assert np.all(np.abs(xs.mean(0) - mean) <= 0.1 * sd), (n, xs.mean(0), mean)
        np.testing.assert_allclose(np.diag(emp_cov), np.diag(cov), rtol=0.10, err_msg=f"N={n}")
    # the tilt really concentrates: variance falls with every refresh (collapse direction of Lemma 1)
    assert np.cov(results[3].T)[0, 0] < np.cov(results[2].T)[0, 0] < np.cov(results[1].T)[0, 0]
