"""Rules of the elementwise primitives: references, finite differences, stacking, adjoints."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st

import dualtensor as dt
from opcheck import broadcast_pair, check_rules, make, noncontig, shapes

SQ2PI = np.sqrt(2 / np.pi)

# name: (function, numpy reference, input domain)
UNARY = {
    "negative": (dt.negative, np.negative, "real"),
    "abs": (dt.abs, np.abs, "away0"),
    "square": (dt.square, np.square, "real"),
    "exp": (dt.exp, np.exp, "unit"),
    "log": (dt.log, np.log, "positive"),
    "sqrt": (dt.sqrt, np.sqrt, "positive"),
    "tanh": (dt.tanh, np.tanh, "real"),
    "sigmoid": (dt.sigmoid, lambda x: 1 / (1 + np.exp(-x)), "real"),
    "relu": (dt.relu, lambda x: np.maximum(x, 0), "away0"),
    "gelu": (dt.gelu, lambda x: 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2))), "real"),
    "gelu_tanh": (lambda x: dt.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(SQ2PI * (x + 0.044715 * x ** 3))), "real"),
    "clip": (lambda x: dt.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), "real"),
    "pow_const": (lambda x: x ** 3, lambda x: x ** 3, "real"),
    "rpow_const": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, "unit"),
    "scalar_mix": (lambda x: 3.0 - x / 2.0 + 1.5 * x, lambda x: 3.0 - x / 2.0 + 1.5 * x, "real"),
}

BINARY = {
    "add": (dt.add, np.add, "real", "real"),
    "subtract": (dt.subtract, np.subtract, "real", "real"),
    "multiply": (dt.multiply, np.multiply, "real", "real"),
    "divide": (dt.divide, np.divide, "real", "positive"),
    "power": (dt.power, np.power, "positive", "unit"),
    "maximum": (dt.maximum, np.maximum, "real", "real"),
    "minimum": (dt.minimum, np.minimum, "real", "real"),
    "operators": (lambda x, y: (x + y) * x - y / (1 + y * y), lambda x, y: (x + y) * x - y / (1 + y * y), "real", "real"),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=shapes(0, 3), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_unary(xp, name, shape, seed, contiguous):
    f, ref, domain = UNARY[name]
    x = make(xp, shape, seed, domain)
    if not contiguous:
        x = noncontig(x)
    if name == "clip":  # keep away from the clip boundaries where the derivative jumps
        x = xp.where(xp.abs(x + 0.5) < 1e-3, x + 0.01, x)
        x = xp.where(xp.abs(x - 0.7) < 1e-3, x + 0.01, x)
    check_rules(f, (x,), ref=ref, ref_rtol=1e-12)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(pair=broadcast_pair(), seed=st.integers(0, 2 ** 16))
def test_binary_broadcast(xp, name, pair, seed):
    f, ref, dx, dy = BINARY[name]
    x, y = make(xp, pair[0], seed, dx), make(xp, pair[1], seed + 1, dy)
    if name in ("maximum", "minimum"):
        y = y + 0.05 * xp.sign(y - x.mean() if x.size else y)  # no exact ties
    check_rules(f, (x, y), diff=(0, 1), ref=ref)
    check_rules(f, (x, y), diff=(0,))
    check_rules(f, (x, y), diff=(1,))


@given(shape=shapes(1, 3), seed=st.integers(0, 2 ** 16))
def test_where(xp, shape, seed):
    x, y = make(xp, shape, seed), make(xp, shape[1:], seed + 1)
    cond = make(xp, shape, seed + 2) > 0
    check_rules(dt.where, (cond, x, y), diff=(1, 2), ref=np.where)


def test_ties_split_derivative():
    x = dt.dual(np.array([1.0, 2.0]), np.ones((1, 2)))
    out = dt.maximum(x, np.array([1.0, 0.0]))
    np.testing.assert_allclose(out.tangent, [[0.5, 1.0]])
    assert dt.relu(dt.dual(np.zeros(3), np.ones((2, 3)))).tangent.sum() == 0  # torch: relu'(0) = 0


def test_float32_stays_float32():
    x = dt.dual(np.ones(3, np.float32), np.ones((2, 3), np.float32))
    for y in (dt.exp(x), x * 2.0, 2.0 / x, x ** 2, dt.gelu(x), dt.sigmoid(x)):
        assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32


def test_float32_gelu_matches_float64():
    # float32 GELU on NumPy uses a rational erf fit, not scipy's erf: check it over the whole range
    x = np.linspace(-12, 12, 200_001)
    exact = 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))
    deriv = 0.5 * (1 + scipy.special.erf(x / np.sqrt(2))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    x32 = x.astype(np.float32)
    out, tan = dt.jvp(dt.gelu, (x32,), (np.ones((1, x.size), np.float32),))
    assert out.dtype == tan.dtype == np.float32
    np.testing.assert_allclose(out, exact, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(tan[0], deriv, rtol=2e-6, atol=1e-6)
    assert dt.gelu(np.array([np.inf], np.float32))[0] == np.inf
    assert (out[x < 0] <= 0).all() and (out[x > 0] >= 0).all()  # erf stays within [-1, 1]
    assert dt.gelu(np.full((2, 0), 1, np.float32)).shape == (2, 0)
    assert np.isnan(dt.gelu(np.array([np.nan], np.float32))).all()


# ------------------------------------------------------------------------------------------ edge cases (issue 10)

def test_sigmoid_is_accurate_far_out():
    assert float(dt.sigmoid(np.float32(-20))) == pytest.approx(2.0611537e-09, rel=1e-6)
    assert float(dt.sigmoid(np.array(-30.0))) == pytest.approx(9.357622968840175e-14, rel=1e-14)
    assert float(dt.log(dt.sigmoid(np.array(-40.0)))) == pytest.approx(-40.0, rel=1e-15)
    assert float(dt.sigmoid(np.float32(30))) == 1.0 and float(dt.sigmoid(np.array(-800.0))) == 0.0
    x = dt.dual(np.array([-40.0, 0.0, 40.0]), np.ones((1, 3)))
    np.testing.assert_allclose(dt.sigmoid(x).tangent[0], [4.248354255291589e-18, 0.25, 4.248354255291589e-18],
                               rtol=1e-12)


def test_power_zero_has_zero_derivative_at_zero():
    x = dt.dual(np.array([0.0, 2.0]), np.ones((1, 2)))
    out = x ** 0
    np.testing.assert_array_equal(out.primal, [1.0, 1.0])
    np.testing.assert_array_equal(out.tangent, [[0.0, 0.0]])
    _, g = dt.value_and_grad(lambda a: (a ** 0.0).sum())(np.array([0.0, 3.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0])


@pytest.mark.parametrize("other, expect", [
    (np.float64(2.0), np.float32), (np.array(2.0), np.float32), (np.arange(3), np.float32),
    (2.0, np.float32), (np.ones(3, np.float64), np.float64), (np.ones(3, np.float16), np.float32),
])
def test_dtypes_combine_as_in_pytorch(other, expect):
    """Dimensioned arrays decide; 0-d arrays, NumPy scalars and integer arrays do not pull a float32
    operand up to float64 (NumPy's rule would)."""
    x = dt.dual(np.ones(3, np.float32), np.ones((2, 3), np.float32))
    for out in (x * other, other + x, dt.maximum(x, other)):
        assert out.primal.dtype == expect and out.tangent.dtype == expect
    assert dt.multiply(np.ones(3, np.float32), other).dtype == expect  # plain arrays: the same rule
    assert dt.multiply(np.arange(3), 2.5).dtype == dt.get_default_dtype()  # a Python float: the default


def test_zero_tangents_are_refused_where_a_dual_tensor_is_made():
    with pytest.raises(ValueError, match="k = 0"):
        dt.dual(np.ones(3), np.ones((0, 3)))
    with pytest.raises(ValueError, match="k = 0"):
        dt.DualTensor(np.ones(3), None, k=0)
    with pytest.raises(ValueError, match="k = 0"):
        dt.jvp(lambda a: a * 2, (np.ones(3),), (np.ones((0, 3)),))


def test_dtype_rule_covers_differentiable_scalars_lists_and_true_division():
    x = dt.dual(np.ones(3, np.float32), np.ones((2, 3), np.float32))
    s = dt.dual(np.array(2.0), np.ones((2,)))  # a 0-d float64 DualTensor: it does not pull x up
    for out in (x * s, s + x):
        assert out.primal.dtype == np.float32 and out.tangent.dtype == np.float32
    np.testing.assert_allclose((x * s).tangent, np.full((2, 3), 3.0))  # d(x s) = s dx + x ds = 2 + 1
    assert (x + [1.0, 2.0, 3.0]).primal.dtype == np.float32  # a list is an array of the default dtype
    assert dt.divide(np.arange(3, dtype=np.int8), 2).dtype == dt.get_default_dtype()
    assert dt.add(np.arange(3, dtype=np.int8), 1).dtype == np.int8
