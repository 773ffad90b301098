"""dropout: one mask shared by the primal and all tangents, rules, statistics, eval identity, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor.tensor import Zero
from opcheck import check_rules, make, noncontig, shapes, to_np


@given(shape=shapes(0, 3), seed=st.integers(0, 2 ** 16), p=st.sampled_from([0.1, 0.5, 0.9]),
       contiguous=st.booleans())
def test_rules_with_explicit_mask(xp, shape, seed, p, contiguous):
    x = make(xp, shape, seed)
    if not contiguous:
        x = noncontig(x)
    mask = xp.asarray(np.random.default_rng(seed + 1).random(shape) >= p)
    check_rules(lambda x: dt.dropout(x, p, mask=mask), (x,), seed=seed + 7,
                ref=lambda x: x * to_np(mask) / (1 - p))


@given(shape=shapes(1, 3), seed=st.integers(0, 2 ** 16))
def test_rules_with_seeded_rng(xp, shape, seed):
    x = make(xp, shape, seed)
    check_rules(lambda x: dt.dropout(x, 0.4, rng=seed), (x,), seed=seed + 7)  # a seed: the same mask every call


@pytest.mark.parametrize("k", [1, 5])
def test_mask_shared_by_primal_and_all_tangents(xp, k):
    x = make(xp, (6, 7), 1, "positive")
    t = make(xp, (k, 6, 7), 2, "positive")
    out = dt.dropout(dt.dual(x, t), 0.5, rng=np.random.default_rng(0))
    factor = to_np(out.primal) / to_np(x)  # the scaled mask: 0 or 1/(1-p)
    assert set(np.unique(factor).round(12)) <= {0.0, 2.0} and 0 < (factor == 0).sum() < factor.size
    np.testing.assert_allclose(to_np(out.tangent), to_np(t) * factor, rtol=1e-15)


def test_forward_mode_equals_constant_multiplication(xp):
    x, t = make(xp, (4, 5), 1), make(xp, (3, 4, 5), 2)
    mask = xp.asarray(np.random.default_rng(3).random((4, 5)) < 0.7)
    p = 0.3
    a = dt.dropout(dt.dual(x, t), p, mask=mask)
    b = dt.dual(x, t) * (mask.astype(x.dtype) / (1 - p))
    np.testing.assert_array_equal(to_np(a.primal), to_np(b.primal))
    np.testing.assert_allclose(to_np(a.tangent), to_np(b.tangent), rtol=1e-15)
    # a symbolic Zero tangent stays symbolic
    z = dt.dropout(dt.DualTensor(x, Zero(3, x.shape, x.dtype)), p, mask=mask)
    assert isinstance(z.tangent, Zero)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_expectation_preserved(xp, p):
    n = 200_000
    out = to_np(dt.dropout(xp.ones(n), p, rng=np.random.default_rng(42)))
    sd = np.sqrt(p / (1 - p) / n)  # std of the mean of n inverted-dropout samples of 1
    assert abs(out.mean() - 1) < 5 * sd
    assert abs((out == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert np.allclose(out[out != 0], 1 / (1 - p))


def test_seeded_reproducible_and_fresh_per_call(xp):
    x = xp.ones((50,))
    a = to_np(dt.dropout(x, 0.5, rng=np.random.default_rng(7)))
    b = to_np(dt.dropout(x, 0.5, rng=np.random.default_rng(7)))
    np.testing.assert_array_equal(a, b)
    g = np.random.default_rng(7)
    c, d = to_np(dt.dropout(x, 0.5, rng=g)), to_np(dt.dropout(x, 0.5, rng=g))
    assert (c != d).any()
    np.testing.assert_array_equal(to_np(dt.dropout(x, 0.5, rng=3)), to_np(dt.dropout(x, 0.5, rng=3)))


def test_eval_and_p0_identity_p1_zeros(xp):
    x = dt.dual(make(xp, (3, 4), 1), make(xp, (2, 3, 4), 2))
    assert dt.dropout(x, 0.5, training=False) is x
    assert dt.dropout(x, 0.0) is x
    z = dt.dropout(x, 1.0)
    assert not to_np(z.primal).any() and not to_np(z.tangent).any()
    assert not to_np(dt.dropout(make(xp, (3,), 1), 1, mask=xp.ones(3, bool))).any()


def test_float32_stays_float32(xp):
    x = dt.dual(make(xp, (3, 4), 1, dtype=np.float32), make(xp, (2, 3, 4), 2, dtype=np.float32))
    for y in (dt.dropout(x, 0.3, rng=1), dt.dropout(x, 0.3, mask=xp.ones((3, 4), bool)), dt.dropout(x, 1.0)):
        assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32


def test_errors(xp):
    x = make(xp, (3, 4), 1)
    for p in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\]"):
            dt.dropout(x, p)
    with pytest.raises(ValueError, match=r"dropout: mask shape \(4, 3\) does not match input shape \(3, 4\)"):
        dt.dropout(x, 0.5, mask=xp.ones((4, 3), bool))
    with pytest.raises(TypeError, match="dropout: mask must be a constant array"):
        dt.dropout(x, 0.5, mask=dt.dual(xp.ones((3, 4)), xp.ones((1, 3, 4))))
    with pytest.raises(TypeError, match="dropout: input must be a floating array"):
        dt.dropout(xp.ones((3, 4), dtype=np.int64), 0.5)
