"""Rules of the reductions: references, finite differences, stacking, adjoints, options and errors."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor.tensor import Traced
from opcheck import check_rules, make, noncontig, shapes


# name: (function(x, axis, keepdims), numpy reference(x, axis, keepdims))
REDUCERS = {
    "sum": (dt.sum, lambda x, a, kd: np.sum(x, axis=a, keepdims=kd)),
    "mean": (dt.mean, lambda x, a, kd: np.mean(x, axis=a, keepdims=kd)),
    "var0": (lambda x, a, kd: dt.var(x, a, kd, ddof=0), lambda x, a, kd: np.var(x, axis=a, keepdims=kd)),
    "var1": (lambda x, a, kd: dt.var(x, a, kd, ddof=1), lambda x, a, kd: np.var(x, axis=a, keepdims=kd, ddof=1)),
    "max": (dt.max, lambda x, a, kd: np.max(x, axis=a, keepdims=kd)),
    "min": (dt.min, lambda x, a, kd: np.min(x, axis=a, keepdims=kd)),
    "logsumexp": (dt.logsumexp, lambda x, a, kd: scipy.special.logsumexp(x, axis=a, keepdims=kd)),
    # the DualTensor/Traced methods route to the same primitives
    "method_var1": (lambda x, a, kd: x.var(a, kd, 1) if isinstance(x, (dt.DualTensor, Traced)) else dt.var(x, a, kd, 1),
                    lambda x, a, kd: np.var(x, axis=a, keepdims=kd, ddof=1)),
    "method_max": (lambda x, a, kd: x.max(a, kd) if isinstance(x, (dt.DualTensor, Traced)) else dt.max(x, a, kd),
                   lambda x, a, kd: np.max(x, axis=a, keepdims=kd)),
}


@st.composite
def shape_axis(draw):
    """A shape (0-d to 3-d) and an axis choice: None, an int or a tuple (negative forms included)."""
    shape = draw(shapes(0, 3, 1, 4))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]) if nd else st.sampled_from(["none", "tuple"]))
    if kind == "none":
        return shape, None
    if kind == "int":
        a = draw(st.integers(0, nd - 1))
        return shape, a - nd if draw(st.booleans()) else a
    axes = draw(st.lists(st.integers(0, nd - 1), unique=True, max_size=nd)) if nd else []
    return shape, tuple(a - nd if draw(st.booleans()) else a for a in axes)


def _n_reduced(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, int) else axis
    return int(np.prod([shape[a] for a in axes]))


@pytest.mark.parametrize("name", sorted(REDUCERS))
@given(sa=shape_axis(), keepdims=st.booleans(), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_reduce_rules(xp, name, sa, keepdims, seed, contiguous):
    shape, axis = sa
    f, ref = REDUCERS[name]
    if name in ("var1", "method_var1") and _n_reduced(shape, axis) < 2:
        axis = None if int(np.prod(shape)) >= 2 else axis
        if _n_reduced(shape, axis) < 2:
            shape, axis = shape + (3,), None
    x = make(xp, shape, seed)  # continuous values: no ties for max/min
    if not contiguous:
        x = noncontig(x)
    check_rules(lambda x: f(x, axis, keepdims), (x,), ref=lambda x: ref(x, axis, keepdims))


@given(shape=shapes(1, 3), seed=st.integers(0, 2 ** 16))
def test_reduce_stacked_k(xp, shape, seed):
    x = make(xp, shape, seed)
    for f in (dt.sum, dt.mean, dt.var, dt.max, dt.logsumexp):
        check_rules(lambda x: f(x, -1, False), (x,), k=5)


def test_results_are_arrays():
    x = np.arange(6.0).reshape(2, 3)
    for f in (dt.sum, dt.mean, dt.var, dt.max, dt.min, dt.logsumexp):
        r = f(x)
        assert type(r) is np.ndarray and r.shape == (), f
        d = f(dt.dual(x, np.ones((2, 2, 3))))
        assert type(d.primal) is np.ndarray and d.primal.shape == () and d.tangent.shape == (2,)
    assert dt.sum(np.float64(2.0)).shape == ()
    assert dt.sum(x, axis=(), keepdims=False).shape == (2, 3)
    assert dt.max(np.array([1, 5, 2])) == 5  # plain integer data is fine outside AD


def test_keepdims_and_negative_axes():
    x = make(np, (2, 3, 4), 1)
    d = dt.dual(x, np.ones((2, 2, 3, 4)))
    for f in (dt.sum, dt.mean, dt.var, dt.max, dt.min, dt.logsumexp):
        assert f(d, (0, -1), True).shape == (1, 3, 1)
        assert f(d, (0, -1), True).tangent.shape == (2, 1, 3, 1)
        assert f(d, -2).shape == (2, 4)


def test_max_min_ties_split_equally():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    t = np.ones((1, 2, 3))
    t[0, 0] = [5.0, 1.0, 2.0]
    out = dt.max(dt.dual(x, t), axis=1)
    np.testing.assert_allclose(out.tangent, [[1.5, 1.0]])
    out = dt.min(dt.dual(x, t), axis=None)
    np.testing.assert_allclose(out.tangent, [5.0])
    # reverse mode splits the cotangent in the same way
    _, vjp_fn = dt.vjp(lambda x: dt.max(x, axis=1), x)
    np.testing.assert_allclose(vjp_fn(np.array([1.0, 3.0]))[0], [[0, 0.5, 0.5], [1, 1, 1]])


def test_var_ddof_matches_numpy():
    x = make(np, (3, 5), 2)
    for ddof in (0, 1, 2):
        np.testing.assert_allclose(dt.var(x, 1, ddof=ddof), np.var(x, axis=1, ddof=ddof), rtol=1e-14)
    d = dt.dual(x, np.ones((1, 3, 5)))
    np.testing.assert_allclose(dt.var(d, 1, ddof=1).tangent, 0, atol=1e-14)  # shifting x leaves var unchanged


def test_logsumexp_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1001.0]])
    np.testing.assert_allclose(dt.logsumexp(x, axis=1), scipy.special.logsumexp(x, axis=1), rtol=1e-14)
    d = dt.logsumexp(dt.dual(x, np.ones((1, 2, 2))), axis=1)
    np.testing.assert_allclose(d.tangent, [[1.0, 1.0]])
    assert np.isfinite(d.tangent).all()
    assert dt.logsumexp(np.array([-np.inf, -np.inf])) == -np.inf


def test_float32_stays_float32():
    x = dt.dual(make(np, (3, 4), 0, dtype=np.float32), make(np, (2, 3, 4), 1, dtype=np.float32))
    for f in (dt.sum, dt.mean, dt.var, dt.max, dt.min, dt.logsumexp):
        for axis in (None, 1):
            y = f(x, axis)
            assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32, f
    _, vjp_fn = dt.vjp(lambda x: dt.var(x, 0) + dt.max(x, 0) + dt.logsumexp(x, 0), x.primal)
    assert vjp_fn(np.ones(4, np.float32))[0].dtype == np.float32


def test_bad_input():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"sum: axis 2 is out of bounds for an array of shape \(2, 3\)"):
        dt.sum(x, 2)
    with pytest.raises(ValueError, match=r"mean: axis -3 is out of bounds"):
        dt.mean(x, -3)
    with pytest.raises(ValueError, match=r"max: repeated axis"):
        dt.max(x, (1, -1))
    with pytest.raises(TypeError, match=r"min: axis must be None, an int or a tuple of ints"):
        dt.min(x, 1.5)
    with pytest.raises(TypeError, match=r"sum: axis must be"):
        dt.sum(x, True)
    with pytest.raises(ValueError, match=r"var: need more reduced elements than ddof, got 3 element\(s\) with ddof=3"):
        dt.var(x, 1, ddof=3)
    with pytest.raises(ValueError, match=r"var: need more reduced elements"):
        dt.var(x, 1, ddof=-1)
    with pytest.raises(TypeError, match=r"var: ddof must be a non-negative integer"):
        dt.var(x, ddof=0.5)
    with pytest.raises(ValueError, match=r"max: cannot reduce over an empty axis"):
        dt.max(np.ones((0, 3)), 0)
    with pytest.raises(ValueError, match=r"logsumexp: cannot reduce over an empty axis"):
        dt.logsumexp(np.ones((2, 0)))
    with pytest.raises(ValueError, match=r"sum: axis 0 is out of bounds for an array of shape \(\)"):
        dt.sum(np.float64(1.0), 0)
