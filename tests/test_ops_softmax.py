"""softmax and log_softmax: references over every axis, rules, stability, dtypes and errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from opcheck import check_rules, make, noncontig, shapes, to_np


def softmax_ref(x, dim):
    if x.ndim == 0:
        return np.ones_like(x)
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / np.sum(e, axis=dim, keepdims=True)


def log_softmax_ref(x, dim):
    if x.ndim == 0:
        return np.zeros_like(x)
    z = x - np.max(x, axis=dim, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=dim, keepdims=True))


FUNCS = {"softmax": (dt.softmax, softmax_ref), "log_softmax": (dt.log_softmax, log_softmax_ref)}


@pytest.mark.parametrize("name", sorted(FUNCS))
@given(shape=shapes(0, 3), seed=st.integers(0, 2 ** 16), contiguous=st.booleans(), negative=st.booleans())
def test_every_axis(xp, name, shape, seed, contiguous, negative):
    f, ref = FUNCS[name]
    x = make(xp, shape, seed)
    if not contiguous:
        x = noncontig(x)
    for axis in range(max(len(shape), 1)):
        dim = axis - max(len(shape), 1) if negative else axis
        check_rules(lambda x, d=dim: f(x, d), (x,), seed=seed + 7, ref=lambda x, d=dim: ref(x, d))


def test_default_dim_is_last(xp):
    x = make(xp, (2, 3, 4), 1)
    np.testing.assert_allclose(to_np(dt.softmax(x)), softmax_ref(to_np(x), -1), rtol=1e-14)
    np.testing.assert_allclose(to_np(dt.log_softmax(x)), log_softmax_ref(to_np(x), -1), rtol=1e-14)


def test_jvp_reuses_probabilities_formula(xp):
    """softmax: s (t - sum s t); log_softmax: t - sum s t, for all k tangents at once."""
    x, t = make(xp, (3, 5), 1), make(xp, (4, 3, 5), 2)
    s = softmax_ref(to_np(x), 1)
    tn = to_np(t)
    st_ = (s * tn).sum(-1, keepdims=True)
    np.testing.assert_allclose(to_np(dt.softmax(dt.dual(x, t), 1).tangent), s * (tn - st_), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(to_np(dt.log_softmax(dt.dual(x, t), 1).tangent), tn - st_, rtol=1e-12)


def test_stable_for_large_logits(xp):
    x = xp.asarray([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    s, ls = to_np(dt.softmax(x)), to_np(dt.log_softmax(x))
    assert np.isfinite(s).all() and np.isfinite(ls).all()
    np.testing.assert_allclose(s, softmax_ref(to_np(x) - to_np(x).mean(1, keepdims=True), 1), rtol=1e-14)
    np.testing.assert_allclose(ls, np.log(s), rtol=1e-12)
    d = dt.log_softmax(dt.dual(x, xp.ones((1, 2, 3))))
    np.testing.assert_allclose(to_np(d.tangent), 0, atol=1e-14)  # shift invariance


def test_float32_stays_float32(xp):
    x = dt.dual(make(xp, (3, 4), 1, dtype=np.float32), make(xp, (2, 3, 4), 2, dtype=np.float32))
    for y in (dt.softmax(x, 0), dt.log_softmax(x), dt.softmax(x, -1)):
        assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32
    out, vjp_fn = dt.vjp(lambda x: dt.log_softmax(x, 0), make(xp, (3, 4), 1, dtype=np.float32))
    assert out.dtype == np.float32 and vjp_fn(xp.ones((3, 4), np.float32))[0].dtype == np.float32


def test_errors(xp):
    x = make(xp, (2, 3), 1)
    with pytest.raises(ValueError, match=r"softmax: dim 2 is out of range for an input of shape \(2, 3\)"):
        dt.softmax(x, 2)
    with pytest.raises(ValueError, match=r"log_softmax: dim -3 is out of range for an input of shape \(2, 3\)"):
        dt.log_softmax(x, -3)
    with pytest.raises(ValueError, match=r"softmax: dim 1 is out of range for an input of shape \(\)"):
        dt.softmax(make(xp, (), 1), 1)
    with pytest.raises(TypeError, match="softmax: dim must be an integer"):
        dt.softmax(x, 1.0)
