"""Primitives with a ``plain_impl`` (the primal alone for plain arrays, no aux for rules): max_pool2d and
batch_norm in training mode give the results of their full impl, which the forward and reverse modes run."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dualtensor as dt
from dualtensor.core import observe
from dualtensor.nn import functional as F


def _dual_primal(f, x):
    """f's primal as forward mode computes it (the full impl, aux and all)."""
    return np.asarray(f(dt.DualTensor(x, np.zeros((1,) + x.shape, x.dtype))).primal)


def _which_impl(monkeypatch, prim_name):
    from dualtensor.core import PRIMITIVES

    prim, calls = PRIMITIVES[prim_name], []
    plain, full = prim.plain_impl, prim.impl
    monkeypatch.setattr(prim, "plain_impl", lambda *a, **p: calls.append("plain") or plain(*a, **p))
    monkeypatch.setattr(prim, "impl", lambda *a, **p: calls.append("full") or full(*a, **p))
    return calls


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(3, 9), st.integers(3, 9)),
       kernel=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 1), special=st.booleans(),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_max_pool2d_plain_equals_full(shape, kernel, stride, pad, special, channels_last, seed):
    pad = min(pad, kernel // 2)
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, size=shape).astype(np.float32)  # ties everywhere
    if special:
        x.flat[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    f = lambda a: F.max_pool2d(a, kernel, stride, pad)  # noqa: E731
    plain = np.asarray(f(x))
    np.testing.assert_array_equal(plain, _dual_primal(f, x))  # bit-for-bit, NaN where the full impl has it
    assert plain.strides == _dual_primal(f, x).strides


def test_plain_calls_take_the_plain_impl_and_are_observed(monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    calls = _which_impl(monkeypatch, "max_pool2d")
    seen = []
    with observe(lambda prim, args, params, ans: seen.append(prim.name)):
        F.max_pool2d(x, 2)
        _dual_primal(lambda a: F.max_pool2d(a, 2), x)
        dt.vjp(lambda a: F.max_pool2d(a, 2), x)
    assert calls == ["plain", "full", "full"]
    assert seen == ["max_pool2d"] * 3


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, channels_last", [((8, 5, 4, 3), False), ((8, 5, 4, 3), True), ((8, 5), False),
                                                  ((8, 5, 7), False)])
def test_batch_norm_train_plain_equals_full(monkeypatch, dtype, affine, shape, channels_last):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = rng.standard_normal(5).astype(dtype) if affine else None
    b = rng.standard_normal(5).astype(dtype) if affine else None
    stats = {}

    def f(a, key):
        rm, rv = np.zeros(5, dtype), np.ones(5, dtype)
        out = F.batch_norm(a, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
        stats[key] = (rm, rv)
        return out
    calls = _which_impl(monkeypatch, "batch_norm_train")
    plain = np.asarray(f(x, "plain"))
    full = _dual_primal(lambda a: f(a, "full"), x)
    assert calls == ["plain", "full"]
    assert plain.dtype == full.dtype == dtype and plain.shape == full.shape
    np.testing.assert_array_equal(plain, full)  # bit for bit: plain and dual passes of one model agree exactly
    for a, c in zip(stats["plain"], stats["full"]):
        np.testing.assert_array_equal(a, c)


def test_batch_norm_sums_do_not_overflow_in_half_precision():
    x = np.ones((64, 4, 32, 32), np.float16)  # per-channel sums 65536: above float16's largest number
    out = np.asarray(F.batch_norm(x, None, None, None, None, training=True))
    assert np.isfinite(out).all()
    _, pull = dt.vjp(lambda w, b: F.batch_norm(x, None, None, w, b, training=True),
                     np.ones(4, np.float16), np.zeros(4, np.float16))
    gw, gb = pull(np.full(x.shape, 1e-3, np.float16))
    assert np.isfinite(gb).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("xdtype, pdtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_batch_norm_plain_takes_the_wider_dtype(xdtype, pdtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 2, 2)).astype(xdtype)
    w, b = rng.standard_normal(3).astype(pdtype), rng.standard_normal(3).astype(pdtype)
    out = np.asarray(F.batch_norm(x, None, None, w, b, training=True))
    full = _dual_primal(lambda a: F.batch_norm(a, None, None, w, b, training=True), x)
    assert out.dtype == full.dtype == np.float64
    np.testing.assert_array_equal(out, full)


def test_batch_norm_cotangents_of_an_empty_batch():
    x = np.ones((0, 3, 4, 4), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out, pull = dt.vjp(lambda w, b: F.batch_norm(x, rm, rv, w, b, training=False), np.ones(3, np.float32),
                       np.zeros(3, np.float32))
    gw, gb = pull(np.ones(out.shape, np.float32))
    np.testing.assert_array_equal(gw, np.zeros(3))
    np.testing.assert_array_equal(gb, np.zeros(3))
