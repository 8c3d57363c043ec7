"""Property-based tests (hypothesis) of the couplings and the losses."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsteer.couplings import build_coupling
from flowsteer.methods.orw import orw_loss

batches = st.tuples(st.integers(2, 12), st.integers(1, 3), st.integers(0, 2**31 - 1))
SETTINGS = settings(max_examples=40, deadline=None)


def _data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), 2 + torch.randn(n, d, generator=g, dtype=torch.float64)


@SETTINGS
@given(batch=batches, kind=st.sampled_from(["independent", "ot", "sinkhorn"]))
def test_coupling_indices_are_permutations_and_select_the_pairs(batch, kind):
    n, d, seed = batch
    x0, x1 = _data(n, d, seed)
    pairs = build_coupling(kind)(x0, x1, generator=torch.Generator().manual_seed(seed))
    for index in (pairs.index0, pairs.index1):
        assert torch.equal(index.sort().values, torch.arange(n))
    assert torch.equal(pairs.x0, x0[pairs.index0]) and torch.equal(pairs.x1, x1[pairs.index1])


def _pair_set(x0, x1):
    return sorted(tuple(torch.cat([a, b]).tolist()) for a, b in zip(x0, x1))


@SETTINGS
@given(batch=batches, kind=st.sampled_from(["independent", "ot"]), perm_seed=st.integers(0, 2**31 - 1))
def test_reordering_the_batch_reorders_the_pairs(batch, kind, perm_seed):
    """Permuting both sides by P gives the same set of (x0, x1) pairs (exact OT: the optimum is unique a.s.)."""
    n, d, seed = batch
    x0, x1 = _data(n, d, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    coupling = build_coupling(kind)
    a = coupling(x0, x1)
    b = coupling(x0[perm], x1[perm])
    assert _pair_set(a.x0, a.x1) == _pair_set(b.x0, b.x1)


losses = st.tuples(st.integers(1, 16), st.integers(1, 4), st.integers(0, 2**31 - 1),
                   st.floats(0.0, 5.0, allow_nan=False))


def _loss_inputs(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    pred, target, ref = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(b, generator=g, dtype=torch.float64) * 3
    return pred, target, ref, w


@SETTINGS
@given(inputs=losses, perm_seed=st.integers(0, 2**31 - 1))
def test_orw_loss_is_invariant_to_permuting_the_batch(inputs, perm_seed):
    b, d, seed, alpha = inputs
    pred, target, ref, w = _loss_inputs(b, d, seed)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(perm_seed))
    loss, w2 = orw_loss(pred, target, ref, w, alpha=alpha)
    loss_p, w2_p = orw_loss(pred[perm], target[perm], ref[perm], w[perm], alpha=alpha)
    torch.testing.assert_close(loss_p, loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w2_p, w2, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(inputs=losses, c=st.floats(1e-3, 1e3, allow_nan=False))
def test_scaling_weights_and_alpha_by_c_scales_the_orw_loss_by_c(inputs, c):
    b, d, seed, alpha = inputs
    pred, target, ref, w = _loss_inputs(b, d, seed)
    loss, _ = orw_loss(pred, target, ref, w, alpha=alpha)
    scaled, _ = orw_loss(pred, target, ref, c * w, alpha=c * alpha)
    torch.testing.assert_close(scaled, c * loss, rtol=1e-10, atol=1e-12)
