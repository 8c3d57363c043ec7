"""Couplings: exact OT against brute force; side data follows the pairs."""

import itertools

import pytest
import torch

from flowsteer.couplings import ExactOTCoupling, IndependentCoupling, SinkhornCoupling, build_coupling
from flowsteer.errors import ConfigError


def brute_force_cost(x0, x1):
    n = x0.shape[0]
    cost = torch.cdist(x0.double(), x1.double()) ** 2
    return min(sum(cost[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n", [2, 3, 5, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ot_is_the_cost_minimising_permutation(n, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 0.5
    pairs = ExactOTCoupling()(x0, x1)
    assert sorted(pairs.index1.tolist()) == list(range(n))  # a permutation, no replacement
    got = ((pairs.x0.double() - pairs.x1.double()) ** 2).sum().item()
    assert got == pytest.approx(brute_force_cost(x0, x1), rel=1e-9, abs=1e-9)
    torch.testing.assert_close(pairs.x1, x1[pairs.index1])
    torch.testing.assert_close(pairs.x0, x0[pairs.index0])


def test_side_data_follows_the_ot_pairs():
    """Weights attached to x1 rows must stay with their rows after re-pairing."""
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(64, 2, generator=g)
    weights = x1[:, 0] * 10 + x1[:, 1]  # a function of the sample: survives only correct alignment
    x0 = torch.randn(64, 2, generator=g)
    pairs = ExactOTCoupling()(x0, x1)
    assert not torch.equal(pairs.index1, torch.arange(64))  # OT did re-pair
    moved = weights[pairs.index1]
    torch.testing.assert_close(moved, pairs.x1[:, 0] * 10 + pairs.x1[:, 1])


def test_ot_shortens_pairs_compared_with_independent():
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) * 2 + 3
    ind = IndependentCoupling()(x0, x1)
    ot_ = ExactOTCoupling()(x0, x1)
    assert ((ot_.x1 - ot_.x0) ** 2).sum() < ((ind.x1 - ind.x0) ** 2).sum()


def test_ot_works_on_images_and_unequal_sizes():
    g = torch.Generator().manual_seed(6)
    x0, x1 = torch.randn(6, 1, 4, 4, generator=g), torch.randn(9, 1, 4, 4, generator=g)
    pairs = ExactOTCoupling()(x0, x1, generator=g)
    assert pairs.x1.shape == (6, 1, 4, 4)
    torch.testing.assert_close(pairs.x1, x1[pairs.index1])
    torch.testing.assert_close(pairs.x0, x0[pairs.index0])


def test_sinkhorn_returns_a_permutation_that_tends_to_exact_ot_as_reg_shrinks():
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g) + 1
    exact = ExactOTCoupling()(x0, x1)
    cost_exact = ((exact.x0 - exact.x1) ** 2).sum().item()
    cost_ind = ((x0 - x1) ** 2).sum().item()
    mean_cost = {}
    for reg in (0.02, 0.2, 0.5):
        costs = []
        for seed in range(5):
            pairs = SinkhornCoupling(reg)(x0, x1, generator=torch.Generator().manual_seed(seed))
            assert sorted(pairs.index1.tolist()) == list(range(32))  # a permutation
            torch.testing.assert_close(pairs.x1, x1[pairs.index1])
            costs.append(((pairs.x0 - pairs.x1) ** 2).sum().item())
        mean_cost[reg] = sum(costs) / len(costs)
    assert mean_cost[0.02] == pytest.approx(cost_exact, rel=0.03)  # reg = 2 % of the mean cost
    assert cost_exact <= mean_cost[0.02] < mean_cost[0.2] < mean_cost[0.5] < cost_ind


def test_sinkhorn_plan_has_uniform_marginals():
    g = torch.Generator().manual_seed(8)
    plan = SinkhornCoupling(0.1).plan(torch.randn(10, 2, generator=g), torch.randn(10, 2, generator=g))
    torch.testing.assert_close(torch.tensor(plan.sum(1)), torch.full((10,), 0.1, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(plan.sum(0)), torch.full((10,), 0.1, dtype=torch.float64), atol=1e-6, rtol=0)


def test_build_coupling_names():
    assert build_coupling("independent").name == "independent"
    assert build_coupling("ot").name == "ot"
    assert build_coupling("sinkhorn").name == "sinkhorn"
    with pytest.raises(ConfigError, match="unknown coupling"):
        build_coupling("hungarian")
