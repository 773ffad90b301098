"""Rules of the pooling primitives: loop references, finite differences, stacking, adjoints, options, errors."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor.ops import pool as pool_mod
from opcheck import check_rules, make, noncontig, to_np


def _out(n, k, s, p, d, ceil_mode):
    o = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def ref_max_pool2d(x, k, s, p, d, ceil_mode):
    """Loop max pooling over the valid cells of each window (torch semantics)."""
    h, w = x.shape[-2:]
    ho, wo = _out(h, k[0], s[0], p[0], d[0], ceil_mode), _out(w, k[1], s[1], p[1], d[1], ceil_mode)
    out = np.full(x.shape[:-2] + (ho, wo), -np.inf)
    for a in range(ho):
        for b in range(wo):
            for i in range(k[0]):
                for j in range(k[1]):
                    r, c = a * s[0] - p[0] + i * d[0], b * s[1] - p[1] + j * d[1]
                    if 0 <= r < h and 0 <= c < w:
                        out[..., a, b] = np.maximum(out[..., a, b], x[..., r, c])
    return out


def ref_avg_pool2d(x, k, s, p, ceil_mode, count_include_pad):
    """Loop average pooling, with torch's divisor (window clipped to the padded input, or to the input)."""
    h, w = x.shape[-2:]
    ho, wo = _out(h, k[0], s[0], p[0], 1, ceil_mode), _out(w, k[1], s[1], p[1], 1, ceil_mode)
    out = np.zeros(x.shape[:-2] + (ho, wo))
    for a in range(ho):
        for b in range(wo):
            r0, c0 = a * s[0] - p[0], b * s[1] - p[1]
            r1, c1 = min(r0 + k[0], h + p[0]), min(c0 + k[1], w + p[1])
            size = (r1 - r0) * (c1 - c0)
            r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
            total = x[..., r0:r1, c0:c1].sum(axis=(-2, -1))
            out[..., a, b] = total / (size if count_include_pad else (r1 - r0) * (c1 - c0))
    return out


def ref_adaptive(x, size):
    h, w = x.shape[-2:]
    oh, ow = size
    out = np.zeros(x.shape[:-2] + (oh, ow))
    for a in range(oh):
        r0, r1 = math.floor(a * h / oh), math.ceil((a + 1) * h / oh)
        for b in range(ow):
            c0, c1 = math.floor(b * w / ow), math.ceil((b + 1) * w / ow)
            out[..., a, b] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def distinct(xp, shape, seed):
    """Values without ties (spaced 0.1 apart, shuffled), so the argmax is stable under finite differences."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return xp.asarray((rng.permutation(n) * 0.1 - 0.05 * n + 0.01 * rng.random(n)).reshape(shape))


@st.composite
def pool_configs(draw, with_dilation=True):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = draw(st.sampled_from([None, 1, 2, (1, 2), (2, 1)]))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if with_dilation else (1, 1)
    h = draw(st.integers(max(3, d[0] * (k[0] - 1) + 1 - 2 * p[0]), 9))
    w = draw(st.integers(max(3, d[1] * (k[1] - 1) + 1 - 2 * p[1]), 9))
    shape = draw(st.sampled_from([(1,), (2,), ()])) + (draw(st.integers(1, 3)), h, w)
    return dict(shape=shape, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=draw(st.booleans()),
                contiguous=draw(st.booleans()))


def _stride(cfg):
    s = cfg["stride"]
    return cfg["kernel"] if s is None else (s, s) if isinstance(s, int) else s


@given(cfg=pool_configs(), seed=st.integers(0, 2 ** 16))
def test_max_pool2d_rules(xp, cfg, seed):
    x = distinct(xp, cfg["shape"], seed)
    if not cfg["contiguous"]:
        x = noncontig(x)
    k, p, d, c = cfg["kernel"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"]

    def f(x):
        return dt.max_pool2d(x, k, cfg["stride"], p, d, c)

    check_rules(f, (x,), ref=lambda x: ref_max_pool2d(x, k, _stride(cfg), p, d, c))


@given(cfg=pool_configs(with_dilation=False), include=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_avg_pool2d_rules(xp, cfg, include, seed):
    x = make(xp, cfg["shape"], seed)
    if not cfg["contiguous"]:
        x = noncontig(x)
    k, p, c = cfg["kernel"], cfg["padding"], cfg["ceil_mode"]

    def f(x):
        return dt.avg_pool2d(x, k, cfg["stride"], p, c, include)

    check_rules(f, (x,), ref=lambda x: ref_avg_pool2d(x, k, _stride(cfg), p, c, include))


@given(shape=st.tuples(st.sampled_from([(1,), (2,), ()]), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
       out=st.tuples(st.integers(1, 5), st.integers(1, 5)), form=st.sampled_from(["pair", "int", "none_h", "none_w"]),
       contiguous=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_adaptive_avg_pool2d_rules(xp, shape, out, form, contiguous, seed):
    shape = shape[0] + shape[1:]
    x = make(xp, shape, seed)
    if not contiguous:
        x = noncontig(x)
    size = {"pair": out, "int": out[0], "none_h": (None, out[1]), "none_w": (out[0], None)}[form]
    want = {"pair": out, "int": (out[0], out[0]), "none_h": (shape[-2], out[1]), "none_w": (out[0], shape[-1])}[form]
    res = check_rules(lambda x: dt.adaptive_avg_pool2d(x, size), (x,), ref=lambda x: ref_adaptive(x, want))
    assert res.shape[-2:] == want


@pytest.mark.parametrize("shape,size", [((2, 3, 8, 6), (4, 3)), ((2, 3, 8, 6), 1), ((3, 4, 4), (2, 4)),
                                        ((1, 2, 7, 5), (3, 2)), ((1, 2, 3, 3), (5, 4))])
def test_adaptive_fast_and_general_paths(xp, shape, size):
    x = make(xp, shape, 7)
    want = (size, size) if isinstance(size, int) else size
    check_rules(lambda x: dt.adaptive_avg_pool2d(x, size), (x,), ref=lambda x: ref_adaptive(x, want))


def test_pools_k8_stacked(xp):
    x = distinct(xp, (2, 3, 7, 6), 1)
    check_rules(lambda x: dt.max_pool2d(x, 3, 2, 1), (x,), k=8,
                ref=lambda x: ref_max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False))
    check_rules(lambda x: dt.max_pool2d(x, 2, 1, dilation=2), (x,), k=8,
                ref=lambda x: ref_max_pool2d(x, (2, 2), (1, 1), (0, 0), (2, 2), False))
    check_rules(lambda x: dt.avg_pool2d(x, 3, 2, 1, True, False), (x,), k=8,
                ref=lambda x: ref_avg_pool2d(x, (3, 3), (2, 2), (1, 1), True, False))
    check_rules(lambda x: dt.adaptive_avg_pool2d(x, (3, 4)), (x,), k=8, ref=lambda x: ref_adaptive(x, (3, 4)))


def test_max_pool2d_ties_take_first_index(xp):
    x = xp.zeros((1, 1, 2, 4))
    t = xp.asarray(np.arange(16.0).reshape(2, 1, 1, 2, 4))
    y = dt.max_pool2d(dt.DualTensor(x, t), 2)
    np.testing.assert_array_equal(to_np(y.tangent)[:, 0, 0, 0], [[0, 2], [8, 10]])  # top-left of each window
    _, vjp_fn = dt.vjp(lambda x: dt.max_pool2d(x, 2, 1), x)  # overlapping windows: the argmax collects both
    (g,) = vjp_fn(xp.ones((1, 1, 1, 3)))
    np.testing.assert_array_equal(to_np(g)[0, 0], [[1, 1, 1, 0], [0, 0, 0, 0]])


def test_max_pool2d_gathers_once(xp, monkeypatch):
    """The argmax positions are computed once from the primal; one gather serves all k tangents."""
    calls = []
    orig = pool_mod._max_pool2d_impl
    monkeypatch.setattr(pool_mod._max_pool2d, "impl", lambda x, **p: calls.append(x.shape) or orig(x, **p))
    x = distinct(xp, (2, 3, 6, 6), 0)
    y = dt.max_pool2d(dt.DualTensor(x, xp.ones((5, 2, 3, 6, 6))), 2)
    assert calls == [(2, 3, 6, 6)] and y.tangent.shape == (5, 2, 3, 3, 3)


def test_float32_preserved(xp):
    x = make(xp, (2, 3, 7, 7), 0, dtype=np.float32)
    t = xp.asarray(np.random.default_rng(0).standard_normal((4, 2, 3, 7, 7)).astype(np.float32))
    for f in (lambda x: dt.max_pool2d(x, 3, 2, 1), lambda x: dt.max_pool2d(x, 3, 1, ceil_mode=True),
              lambda x: dt.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False),
              lambda x: dt.adaptive_avg_pool2d(x, 1), lambda x: dt.adaptive_avg_pool2d(x, (3, 2))):
        y = f(dt.DualTensor(x, t))
        assert f(x).dtype == np.float32 and y.primal.dtype == np.float32 and y.tangent.dtype == np.float32
        _, vjp_fn = dt.vjp(f, x)
        assert vjp_fn(xp.ones(y.shape, np.float32))[0].dtype == np.float32


def test_ceil_mode_shapes():
    x = np.zeros((1, 1, 5, 5))
    assert dt.max_pool2d(x, 2, ceil_mode=True).shape == (1, 1, 3, 3)
    assert dt.max_pool2d(x, 2).shape == (1, 1, 2, 2)
    assert dt.avg_pool2d(x, 3, 2, 1, ceil_mode=True).shape == (1, 1, 3, 3)  # last window would start in the padding
    assert dt.max_pool2d(np.zeros((2, 6, 6)), 3, 3).shape == (2, 2, 2)


@pytest.mark.parametrize("f,shape,match", [
    (lambda x: dt.max_pool2d(x, 2), (4, 4), r"max_pool2d: input must be 4-d .* got shape \(4, 4\)"),
    (lambda x: dt.avg_pool2d(x, 2), (1, 1, 1, 4, 4), r"avg_pool2d: input must be 4-d .* got shape \(1, 1, 1, 4, 4\)"),
    (lambda x: dt.adaptive_avg_pool2d(x, 2), (4,), r"adaptive_avg_pool2d: input must be 4-d"),
    (lambda x: dt.max_pool2d(x, 5), (1, 1, 4, 4), r"max_pool2d: kernel size \(5, 5\).*larger than the padded input "
                                                  r"\(4, 4\) for input shape \(1, 1, 4, 4\)"),
    (lambda x: dt.max_pool2d(x, 3, dilation=2), (1, 1, 4, 4), r"max_pool2d: kernel size \(3, 3\) \(dilation"),
    (lambda x: dt.max_pool2d(x, 2, padding=2), (1, 1, 4, 4), r"max_pool2d: padding \(2, 2\) must be at most half"),
    (lambda x: dt.avg_pool2d(x, 3, padding=(0, 2)), (1, 1, 4, 4), r"avg_pool2d: padding \(0, 2\) must be at most half"),
    (lambda x: dt.max_pool2d(x, 0), (1, 1, 4, 4), r"max_pool2d: kernel_size must be >= 1"),
    (lambda x: dt.avg_pool2d(x, 2, stride=(1, 0)), (1, 1, 4, 4), r"avg_pool2d: stride must be >= 1"),
    (lambda x: dt.max_pool2d(x, (2, 2, 2)), (1, 1, 4, 4), r"max_pool2d: kernel_size must be an int or a pair"),
    (lambda x: dt.adaptive_avg_pool2d(x, 0), (1, 1, 4, 4), r"adaptive_avg_pool2d: output_size must be >= 1"),
    (lambda x: dt.adaptive_avg_pool2d(x, (1, 2, 3)), (1, 1, 4, 4), r"adaptive_avg_pool2d: output_size must be an int "),
])
def test_bad_input(f, shape, match):
    with pytest.raises(ValueError, match=match):
        f(np.zeros(shape))


def test_integer_input_rejected():
    with pytest.raises(TypeError, match=r"max_pool2d: input must be a floating array"):
        dt.max_pool2d(np.zeros((1, 1, 4, 4), dtype=np.int32), 2)


def test_max_pool2d_nan_wins_and_lost_cells_do_not_leak(xp):
    """torch's rule: a NaN in a window is its maximum (the last NaN's cell is picked); the tangent of
    the picked cell is taken exactly, so inf or NaN tangents of cells that lost do not leak."""
    x = xp.asarray(np.array([[[[1.0, np.nan, 3.0, 0.0], [np.nan, 2.0, 5.0, 4.0]]]]))
    t = xp.asarray(np.array([[[[10.0, 11.0, np.inf, np.nan], [12.0, 13.0, 14.0, -np.inf]]]]))
    y = dt.max_pool2d(dt.DualTensor(x, t[None]), 2)
    out, tan = to_np(y.primal)[0, 0, 0], to_np(y.tangent)[0, 0, 0, 0]
    assert np.isnan(out[0]) and out[1] == 5.0
    np.testing.assert_array_equal(tan, [12.0, 14.0])  # the last NaN (row 1, col 0); the 5 at (1, 2)
    _, vjp_fn = dt.vjp(lambda x: dt.max_pool2d(x, 2), x)
    (g,) = vjp_fn(xp.asarray(np.array([[[[np.inf, 2.0]]]])))
    np.testing.assert_array_equal(to_np(g)[0, 0], [[0, 0, 0, 0], [np.inf, 0, 2.0, 0]])


def test_max_pool2d_keeps_the_input_memory_layout(xp):
    """A channels-last input (as conv2d's shifted-GEMM results are) gives channels-last results and
    cotangents, so the next convolution needs no transposing copy."""
    x = xp.ascontiguousarray(make(xp, (2, 6, 8, 3), 0)).transpose(0, 3, 1, 2)
    t = xp.ascontiguousarray(make(xp, (4, 2, 6, 8, 3), 1)).transpose(0, 1, 4, 2, 3)
    y = dt.max_pool2d(dt.DualTensor(x, t), 2)
    assert y.primal.strides[1] == y.primal.itemsize and y.tangent.strides[2] == y.tangent.itemsize
    _, vjp_fn = dt.vjp(lambda x: dt.max_pool2d(x, 2), x)
    (g,) = vjp_fn(xp.ones((2, 3, 3, 4)))
    assert g.strides[1] == g.itemsize
    np.testing.assert_array_equal(to_np(y.primal), to_np(dt.max_pool2d(xp.ascontiguousarray(x), 2)))


def test_max_pool2d_padded_windows_gather_exactly(xp):
    """Padded/overlapping windows take each winner's tangent by one gather: inf and NaN tangents of
    cells that lost stay out, as in the non-overlapping selection."""
    x = xp.asarray(np.array([[[[1.0, 5.0, 2.0], [0.0, 3.0, 4.0], [6.0, 0.5, 0.25]]]]))
    t = xp.asarray(np.array([[[[np.inf, 1.0, np.nan], [np.nan, 2.0, 3.0], [4.0, -np.inf, np.inf]]]]))
    y = dt.max_pool2d(dt.DualTensor(x, t[None]), 3, 2, 1)  # windows centred on (0, 0), (0, 2), (2, 0), (2, 2)
    np.testing.assert_array_equal(to_np(y.primal)[0, 0], [[5.0, 5.0], [6.0, 4.0]])
    np.testing.assert_array_equal(to_np(y.tangent)[0, 0, 0], [[1.0, 1.0], [4.0, 3.0]])
