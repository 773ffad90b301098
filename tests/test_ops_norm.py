"""Rules of layer_norm and batch_norm: NumPy references, finite differences, stacking, adjoints,
running statistics, dtypes and argument errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor.tensor import Zero
from opcheck import check_rules, make, noncontig, shapes, to_np

AFFINE = ["none", "weight", "bias", "both"]
# With only 2 normalised values and a tiny eps the output is nearly constant (+-1), so finite differences
# cannot resolve the (correct, tiny) derivative; the drawn-shape tests use a larger eps.
EPS = 1e-2


# ---- plain NumPy references -------------------------------------------------------------------

def ln_ref(x, nshape, w=None, b=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(nshape), x.ndim))
    mu = np.mean(x, axis=axes, keepdims=True)
    var = np.var(x, axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def bn_ref(x, mean, var, w=None, b=None, eps=1e-5):
    y = (x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(var, x.ndim) + eps)
    if w is not None:
        y = y * _per_channel(w, x.ndim)
    if b is not None:
        y = y + _per_channel(b, x.ndim)
    return y


def batch_stats(x):
    """Per-channel batch mean, biased and unbiased variance (channels moved first, then flattened)."""
    xc = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return xc.mean(axis=1), xc.var(axis=1), xc.var(axis=1, ddof=1)


def _affine_args(xp, which, shape, seed):
    w = make(xp, shape, seed + 1) if which in ("weight", "both") else None
    b = make(xp, shape, seed + 2) if which in ("bias", "both") else None
    return w, b


def _diff_call(fn, x, w, b):
    """(f, args, diff) differentiating w.r.t. x and whichever of w, b are present."""
    present = [a is not None for a in (w, b)]

    def f(x, *wb):
        it = iter(wb)
        return fn(x, next(it) if present[0] else None, next(it) if present[1] else None)

    args = (x,) + tuple(a for a in (w, b) if a is not None)
    return f, args, tuple(range(len(args)))


# ---- layer_norm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", AFFINE)
@given(batch=shapes(0, 2, 1, 3), norm=shapes(1, 3, 1, 4), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_layer_norm(xp, affine, batch, norm, seed, contiguous):
    x = make(xp, batch + norm, seed)
    if not contiguous:
        x = noncontig(x)
    w, b = _affine_args(xp, affine, norm, seed)
    f, args, diff = _diff_call(lambda x, w, b: dt.layer_norm(x, norm, w, b, eps=EPS), x, w, b)
    check_rules(f, args, diff, seed=seed + 7, ref=lambda x, *wb: ln_ref(x, norm, w=to_np(w) if w is not None else None,
                                                                        b=to_np(b) if b is not None else None, eps=EPS))


def test_layer_norm_int_shape_and_eps(xp):
    x = make(xp, (3, 5), 1)
    out = dt.layer_norm(x, 5, eps=0.1)
    np.testing.assert_allclose(to_np(out), ln_ref(to_np(x), (5,), eps=0.1), rtol=1e-12)
    check_rules(lambda x: dt.layer_norm(x, [5], eps=0.1), (x,), seed=3)


def test_layer_norm_jvp_is_the_projection(xp):
    """The input tangent map is rstd * (t - mean t - xhat mean(t xhat)) * w, for all k tangents at once."""
    x, w = make(xp, (2, 3, 4), 1), make(xp, (4,), 2)
    t = make(xp, (5, 2, 3, 4), 3)
    out = dt.layer_norm(dt.dual(x, t), 4, w)
    xn = to_np(x)
    rstd = 1 / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    xhat = (xn - xn.mean(-1, keepdims=True)) * rstd
    tn = to_np(t)
    expect = rstd * (tn - tn.mean(-1, keepdims=True) - xhat * (tn * xhat).mean(-1, keepdims=True)) * to_np(w)
    np.testing.assert_allclose(to_np(out.tangent), expect, rtol=1e-12, atol=1e-12)


# ---- batch_norm ------------------------------------------------------------------------------------

@st.composite
def bn_shapes(draw, train):
    """(N, C) or (N, C, H, W); batch 1 included where training has more than one value per channel."""
    four = draw(st.booleans())
    c = draw(st.integers(1, 3))
    if four:
        n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        if train and n * h * w < 2:
            w = 2
        return (n, c, h, w)
    return (draw(st.integers(2 if train else 1, 5)), c)


@pytest.mark.parametrize("affine", AFFINE)
@given(shape=bn_shapes(train=True), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_batch_norm_train(xp, affine, shape, seed, contiguous):
    x = make(xp, shape, seed)
    if not contiguous:
        x = noncontig(x)
    w, b = _affine_args(xp, affine, shape[1:2], seed)

    def ref(x, *wb):
        mean, var, _ = batch_stats(x)
        return bn_ref(x, mean, var, to_np(w) if w is not None else None, to_np(b) if b is not None else None, EPS)

    f, args, diff = _diff_call(lambda x, w, b: dt.batch_norm(x, None, None, w, b, training=True, eps=EPS), x, w, b)
    check_rules(f, args, diff, seed=seed + 7, ref=ref)


@pytest.mark.parametrize("affine", AFFINE)
@given(shape=bn_shapes(train=False), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_batch_norm_eval(xp, affine, shape, seed, contiguous):
    x = make(xp, shape, seed)
    if not contiguous:
        x = noncontig(x)
    c = shape[1]
    rm, rv = make(xp, (c,), seed + 3), make(xp, (c,), seed + 4, "positive")
    rm0, rv0 = rm.copy(), rv.copy()
    w, b = _affine_args(xp, affine, (c,), seed)
    ref = lambda x, *wb: bn_ref(x, to_np(rm), to_np(rv), to_np(w) if w is not None else None,
                                to_np(b) if b is not None else None)
    f, args, diff = _diff_call(lambda x, w, b: dt.batch_norm(x, rm, rv, w, b, training=False), x, w, b)
    check_rules(f, args, diff, seed=seed + 7, ref=ref)
    assert (to_np(rm) == to_np(rm0)).all() and (to_np(rv) == to_np(rv0)).all(), "eval must not touch running stats"


def test_batch_norm_eval_is_affine(xp):
    """Eval mode: JVP = t * weight * rstd (+ xhat tw + tb), no batch-statistics terms."""
    x, rm, rv, w = make(xp, (4, 3, 2, 2), 1), make(xp, (3,), 2), make(xp, (3,), 3, "positive"), make(xp, (3,), 4)
    t = make(xp, (2, 4, 3, 2, 2), 5)
    out = dt.batch_norm(dt.dual(x, t), rm, rv, w)
    scale = _per_channel(to_np(w) / np.sqrt(to_np(rv) + 1e-5), 4)
    np.testing.assert_allclose(to_np(out.tangent), to_np(t) * scale, rtol=1e-13)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 2), (1, 2, 3, 3)])
@pytest.mark.parametrize("mode", ["plain", "k1", "k4", "zero", "traced"])
def test_batch_norm_running_stats_updated_once(xp, shape, mode):
    x = make(xp, shape, 11)
    c, m = shape[1], 0.3
    rm, rv = make(xp, (c,), 12), make(xp, (c,), 13, "positive")
    rm0, rv0 = to_np(rm).copy(), to_np(rv).copy()
    if mode == "plain":
        arg = x
    elif mode == "zero":
        arg = dt.DualTensor(x, Zero(3, shape, x.dtype))
    elif mode == "traced":
        arg = None
    else:
        k = int(mode[1:])
        arg = dt.dual(x, make(xp, (k, *shape), 14))
    if mode == "traced":
        dt.vjp(lambda x: dt.batch_norm(x, rm, rv, training=True, momentum=m), x)
    else:
        dt.batch_norm(arg, rm, rv, training=True, momentum=m)
    mean, _, var_unbiased = batch_stats(to_np(x))
    np.testing.assert_allclose(to_np(rm), (1 - m) * rm0 + m * mean, rtol=1e-13)
    np.testing.assert_allclose(to_np(rv), (1 - m) * rv0 + m * var_unbiased, rtol=1e-13)
    # a second call updates again, from the new buffers
    dt.batch_norm(x, rm, rv, training=True, momentum=m)
    np.testing.assert_allclose(to_np(rm), (1 - m) * ((1 - m) * rm0 + m * mean) + m * mean, rtol=1e-13)


def test_batch_norm_running_stats_optional_and_default_momentum(xp):
    x = make(xp, (6, 2), 1)
    rm = xp.zeros(2)
    out = dt.batch_norm(x, rm, None, training=True)
    np.testing.assert_allclose(to_np(rm), 0.1 * batch_stats(to_np(x))[0], rtol=1e-13)
    np.testing.assert_allclose(to_np(out).mean(0), 0, atol=1e-12)


# ---- dtypes -----------------------------------------------------------------------------------------

def test_float32_stays_float32(xp):
    f32 = np.float32
    x = dt.dual(make(xp, (4, 3, 2, 2), 1, dtype=f32), make(xp, (2, 4, 3, 2, 2), 2, dtype=f32))
    w = dt.dual(make(xp, (3,), 3, dtype=f32), make(xp, (2, 3), 4, dtype=f32))
    b = make(xp, (3,), 5, dtype=f32)
    rm, rv = xp.zeros(3, f32), xp.ones(3, f32)
    outs = [dt.layer_norm(x, (2, 2)), dt.layer_norm(x, (3, 2, 2), make(xp, (3, 2, 2), 6, dtype=f32)),
            dt.batch_norm(x, rm, rv, w, b, training=True), dt.batch_norm(x, rm, rv, w, b, training=False)]
    for y in outs:
        assert y.primal.dtype == f32 and y.tangent.dtype == f32
    assert rm.dtype == f32 and rv.dtype == f32
    out, vjp_fn = dt.vjp(lambda x: dt.batch_norm(x, None, None, training=True), make(xp, (3, 2), 1, dtype=f32))
    assert out.dtype == f32 and vjp_fn(xp.ones((3, 2), f32))[0].dtype == f32


# ---- errors -----------------------------------------------------------------------------------------

def test_layer_norm_errors(xp):
    x = make(xp, (2, 3, 4), 1)
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(3,\) does not match .* shape \(2, 3, 4\)"):
        dt.layer_norm(x, 3)
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(1, 2, 3, 4\)"):
        dt.layer_norm(x, (1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(3,\), expected normalized_shape \(4,\)"):
        dt.layer_norm(x, 4, make(xp, (3,), 2))
    with pytest.raises(ValueError, match=r"layer_norm: bias has shape \(3, 4\), expected normalized_shape \(4,\)"):
        dt.layer_norm(x, 4, None, make(xp, (3, 4), 2))
    with pytest.raises(ValueError, match="layer_norm: eps must be positive"):
        dt.layer_norm(x, 4, eps=0.0)


def test_batch_norm_errors(xp):
    x = make(xp, (4, 3, 2, 2), 1)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean has shape \(4,\) but the input of shape "
                                         r"\(4, 3, 2, 2\) has 3 channels"):
        dt.batch_norm(x, xp.zeros(4), xp.ones(3))
    with pytest.raises(ValueError, match=r"batch_norm: running_var has shape \(2,\)"):
        dt.batch_norm(x, xp.zeros(3), xp.ones(2), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(2,\) .* 3 channels"):
        dt.batch_norm(x, None, None, xp.ones(2), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: bias has shape \(3, 1\)"):
        dt.batch_norm(x, None, None, None, xp.ones((3, 1)), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: expected input of shape \(N, C\).*got shape \(3,\)"):
        dt.batch_norm(make(xp, (3,), 1), None, None, training=True)
    with pytest.raises(ValueError, match="batch_norm: running_mean and running_var are required"):
        dt.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training, got input shape \(1, 3\)"):
        dt.batch_norm(make(xp, (1, 3), 1), None, None, training=True)
    with pytest.raises(TypeError, match="batch_norm: running_mean is a constant buffer"):
        dt.batch_norm(x, dt.dual(xp.zeros(3), xp.ones((1, 3))), xp.ones(3), training=True)
    with pytest.raises(TypeError, match="batch_norm: running_var is a constant buffer"):
        dt.batch_norm(x, xp.zeros(3), dt.dual(xp.ones(3), xp.ones((1, 3))))
