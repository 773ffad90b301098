"""Keyed tangents (dualtensor.fgrad.streams): a pure function of (seed, step, tangent, position), so any
part can be drawn alone, on NumPy and on CuPy, and the estimators draw the same numbers from them."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dualtensor as dt
from dualtensor.fgrad import activity_gradient, forward_gradient
from dualtensor.fgrad.streams import KeyedTangents, keyed_entries, stream_key
from dualtensor.nn import functional as F
from dualtensor.nn import functional_call, models

CHUNK = 8192


@given(start=st.integers(0, 3 * CHUNK), count=st.integers(0, 2 * CHUNK),
       sampler=st.sampled_from(["normal", "rademacher"]), dtype=st.sampled_from([np.float32, np.float64]))
def test_any_range_of_a_stream_is_that_slice_of_the_whole(start, count, sampler, dtype):
    keys = [stream_key(3, 1, 2, 0), stream_key(3, 1, 3, 0)]
    whole = keyed_entries(sampler, keys, 0, 5 * CHUNK, dtype)
    part = keyed_entries(sampler, keys, start, count, dtype)
    assert part.dtype == dtype and part.shape == (2, count)
    np.testing.assert_array_equal(part, whole[:, start:start + count])
    np.testing.assert_array_equal(keyed_entries(sampler, keys[1:], start, count, dtype)[0], part[1])  # one at a time


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_streams_are_standard_normal_and_independent(dtype):
    n = 1 << 20
    a, b = keyed_entries("normal", [stream_key(0, 0, 0, 0), stream_key(0, 0, 1, 0)], 0, n, dtype)
    se = 1 / np.sqrt(n)
    assert abs(a.mean()) < 5 * se and abs(a.var() - 1) < 5 * np.sqrt(2) * se
    assert abs((a ** 4).mean() - 3) < 0.05  # Gaussian kurtosis
    assert abs(np.mean(a * b)) < 5 * se  # two tangents: uncorrelated
    assert abs(np.mean(a[:CHUNK // 2] * a[CHUNK // 2:CHUNK])) < 5 / np.sqrt(CHUNK / 2)  # r cos t against r sin t
    assert abs(np.mean(a[:-1] * a[1:])) < 5 * se
    # the tails: P(|z| > 3) = 0.0027
    assert abs(np.mean(np.abs(a) > 3) - 0.0027) < 0.0005


def test_rademacher_streams_are_fair_signs():
    r = keyed_entries("rademacher", [stream_key(5, 2, 0, 1)], 0, 1 << 18, np.float32)[0]
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 5 / np.sqrt(r.size)


def test_keys_separate_seed_step_tangent_and_part():
    keys = {stream_key(*k) for k in [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]}
    assert len(keys) == 5 and stream_key(0, 0, 0, 0) == stream_key(0, 0, 0, 0)


@pytest.mark.parametrize("sampler", ["normal", "rademacher", "orthonormal", "cone"])
def test_weight_tangent_ranges_are_slices_of_all_k(sampler):
    keys = KeyedTangents(4, 9)
    V = keys.weight(sampler, 5, 300, dtype=np.float32)
    assert V.shape == (5, 300)
    np.testing.assert_array_equal(keys.weight(sampler, 5, 300, dtype=np.float32, tangents=(2, 4)), V[2:4])
    np.testing.assert_array_equal(KeyedTangents(4, 9).weight(sampler, 5, 300, dtype=np.float32), V)  # not consumed
    assert not np.array_equal(KeyedTangents(4, 10).weight(sampler, 5, 300, dtype=np.float32), V)
    with pytest.raises(ValueError, match="tangent range 3..6"):
        keys.weight(sampler, 5, 300, dtype=np.float32, tangents=(3, 6))


@pytest.mark.parametrize("sampler", ["normal", "rademacher", "orthonormal"])
@pytest.mark.parametrize("shared", [False, True])
def test_activity_rows_and_tangent_ranges_are_slices_of_the_whole_batch(sampler, shared):
    keys, sizes, B = KeyedTangents(1, 2), [7, 3], 6

    def draw(view, batch, tangents=None):
        d = view.activity(sampler, 4, batch, shared=shared, tangents=tangents)
        if not d.per_block:
            return d.whole(sum(sizes), np.float64)
        return np.concatenate([d(n, np.float64) for n in sizes], axis=-1)

    whole = draw(keys, B)
    assert whole.shape == (4, B, 10)
    if shared:
        assert (whole == whole[:, :1]).all()
    np.testing.assert_array_equal(draw(keys.rows(2, 5, B), 3), whole[:, 2:5])
    np.testing.assert_array_equal(draw(keys.rows(2, 5, B), 3, (1, 3)), whole[1:3, 2:5])
    with pytest.raises(ValueError, match="cannot serve a batch of 4"):
        keys.rows(2, 5, B).activity(sampler, 4, 4)
    with pytest.raises(ValueError, match="not within a batch"):
        keys.rows(2, 8, B)


def test_estimators_draw_the_keyed_tangents():
    dt.nn.init.manual_seed(0)
    model = models.mlp(12, width=8, depth=1, classes=3)
    x = np.random.default_rng(0).standard_normal((5, 12))
    y = np.arange(5) % 3
    loss = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
    keys = KeyedTangents(2, 3)
    res = activity_gradient(model, loss, x, y, k=3, rng=keys, return_estimate=True)
    V = np.concatenate([d for d in _blocks(keys, 5, res.sizes)], axis=-1)
    np.testing.assert_array_equal(res.tangents, V)
    again = activity_gradient(model, loss, x, y, k=3, rng=keys)
    assert all(np.array_equal(res.grads[n], again.grads[n]) for n in res.grads)

    P = {n: p.data for n, p in model.named_parameters()}
    _, _, d, V = forward_gradient(lambda P: F.cross_entropy(functional_call(model, P, x), y), P, 3, rng=keys,
                                  return_tangents=True)
    n = sum(p.size for p in P.values())
    np.testing.assert_array_equal(V, keys.weight("normal", 3, n, dtype=V.dtype))


def _blocks(keys, batch, sizes):
    d = keys.activity("normal", 3, batch)
    return [d(n, np.float64) for n in sizes]


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["normal", "rademacher"])
def test_keyed_tangents_are_made_on_the_device_and_equal_the_host_ones(sampler):
    cupy = pytest.importorskip("cupy")
    keys = KeyedTangents(0, 1)
    host = keys.weight(sampler, 2, 20000, dtype=np.float32)
    dev = keys.weight(sampler, 2, 20000, dtype=np.float32, xp=cupy)
    assert dt.backend.is_cupy(dev)
    np.testing.assert_allclose(dt.backend.to_host(dev), host, rtol=1e-6, atol=1e-6)
    act = keys.activity(sampler, 2, 3, xp=cupy)(50, np.float32)
    assert dt.backend.is_cupy(act) and act.shape == (2, 3, 50)


@pytest.mark.parametrize("first, count", [(0, 5000), (123_456_789, 70_001)])
def test_compiled_words_are_the_array_code_s(monkeypatch, first, count):
    """SplitMix64 compiled by numba (dualtensor.jit) and as NumPy passes: the same words."""
    pytest.importorskip("numba", reason="the compiled words need the numba extra")
    from dualtensor import jit
    from dualtensor.fgrad import streams

    if not jit.available():
        pytest.skip("DUALTENSOR_NUMBA=0 is set")
    keys = np.array([stream_key(7, 1, j, 0) for j in range(3)], dtype=np.uint64)
    fast = streams._words(keys, first, count, np)
    monkeypatch.setattr(streams.jit, "compile", lambda kernel: None)
    assert np.array_equal(fast, streams._words(keys, first, count, np))
