import math

import numpy as np
import pytest
import torch

from flowsteer.metrics import class_histogram, entropy, mean_pairwise_distance, total_variation, wasserstein2


def test_w2_closed_forms():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([3.0, 4.0, 0.0])
    assert wasserstein2(x, x + shift) == pytest.approx(5.0, rel=1e-6)  # a translation moves every point by |shift|
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [3.0]])
    assert wasserstein2(a, b) == pytest.approx(math.sqrt((1 + 4) / 2))  # sorted pairing in 1-D


def test_pairwise_histogram_entropy_tv():
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    h = class_histogram(np.array([0, 2, 2, 4]), 5)
    np.testing.assert_allclose(h, [0.25, 0, 0.5, 0, 0.25])
    assert entropy(np.full(5, 0.2)) == pytest.approx(math.log(5))
    assert entropy(np.array([1.0, 0, 0])) == 0.0
    assert total_variation(np.array([1.0, 0]), np.array([0, 1.0])) == 1.0


def test_stability_std_and_spearman():
    from flowsteer.metrics import stability

    hist = [{"step": 0, "m": 9.0}, {"step": 10, "m": 5.0}, {"step": 20, "m": 4.0}, {"step": 30, "m": 2.0},
            {"step": 40, "m": 1.0}]
    out = stability(hist, "m", last=3)
    assert out["m_last3_std"] == pytest.approx(np.std([4.0, 2.0, 1.0]))  # step 0 excluded
    assert out["m_spearman_step"] == pytest.approx(-1.0)  # improves monotonically
    out = stability(hist[:2], "m")
    assert out == {"m_last3_std": None, "m_spearman_step": None}  # too few evaluations: JSON null, not NaN
    noisy = [{"step": s, "m": v} for s, v in zip(range(1, 7), [1, 3, 2, 3, 1, 2])]
    assert abs(stability(noisy, "m")["m_spearman_step"]) < 0.3
