"""The compiled max-pool kernels (dualtensor.ops.pool_kernels) give bit for bit what the array code gives:
the maxima, the winners, the k tangents' selection and the cotangent's scatter, on channels-last input with
ties, NaNs and signed zeros, on one and two threads; and they take only the cases they are written for."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import dualtensor as dt
from dualtensor import jit
from dualtensor.ops import pool, pool_kernels

NO_PAD = ((0, 0), (0, 0))


@pytest.fixture
def compiled(monkeypatch):
    pytest.importorskip("numba", reason="the compiled kernels need the numba extra")
    if not jit.available():
        pytest.skip("DUALTENSOR_NUMBA=0 is set")
    monkeypatch.setattr(pool_kernels, "MIN_CELLS", 0)


def _channels_last(a):
    """The same values, (..., N, C, H, W) in channels-last memory."""
    return np.ascontiguousarray(np.moveaxis(a, -3, -1)).swapaxes(-1, -2).swapaxes(-2, -3)


def _awkward(rng, shape, dtype):
    """Values with many ties (one decimal), NaNs of two payloads, +0 and -0 (ties between them keep bits
    apart: which one a map keeps shows)."""
    x = rng.standard_normal(shape).round(1).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, flat.size // 20)] = np.nan
    other = np.array([np.nan], dtype)
    other.view(_bits(other).dtype)[0] += 1  # a quiet NaN of another payload
    flat[rng.integers(0, flat.size, flat.size // 20)] = other[0]
    flat[rng.integers(0, flat.size, flat.size // 10)] = -0.0
    flat[rng.integers(0, flat.size, flat.size // 10)] = 0.0
    return x


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _all_maps(x, t, g, stride):
    geo = dict(kernel=(2, 2), stride=stride, pads=NO_PAD, dilation=(1, 1))
    ans = pool._max_pool2d_impl(x, **geo)
    value, _ = pool._max_pool2d_value(x, **geo)
    return ans, value, pool._max_pool2d_jvp((t,), ans, x, **geo), pool._max_pool2d_vjp(g, ans, x, **geo)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw,stride", [((12, 12), (2, 2)), ((13, 11), (2, 2)), ((12, 15), (3, 2))])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_maps_equal_the_array_code_bit_for_bit(compiled, monkeypatch, dtype, hw, stride, threads):
    rng = np.random.default_rng(3)
    x = _channels_last(_awkward(rng, (5, 6) + hw, dtype))
    ho, wo = (hw[0] - 2) // stride[0] + 1, (hw[1] - 2) // stride[1] + 1
    t = _channels_last(_awkward(rng, (3, 5, 6) + hw, dtype))
    g = _channels_last(_awkward(rng, (5, 6, ho, wo), dtype))
    assert pool_kernels.usable(x, (2, 2), stride, NO_PAD, (1, 1))
    with threadpool_limits(limits=threads, user_api="blas"):
        (best, arg), value, tangent, cotangent = _all_maps(x, t, g, stride)
    monkeypatch.setattr(pool_kernels, "usable", lambda *a: False)
    (best0, arg0), value0, tangent0, cotangent0 = _all_maps(x, t, g, stride)
    assert best.shape == best0.shape == (5, 6, ho, wo) and tangent.shape == (3, 5, 6, ho, wo)
    assert arg.dtype == arg0.dtype and np.array_equal(arg, arg0)
    assert np.array_equal(_bits(best), _bits(best0)) and np.array_equal(_bits(value), _bits(value0))
    assert np.array_equal(_bits(tangent), _bits(tangent0))
    assert cotangent.shape == x.shape and np.array_equal(_bits(cotangent), _bits(cotangent0))
    assert np.isnan(best0).any() and (np.signbit(best0) & (best0 == 0)).any()  # the awkward cases occurred
    assert best.strides[1] == best.itemsize  # channels last, as the input


def test_a_pooled_dual_tensor_through_the_kernels_matches_the_array_code(compiled, monkeypatch):
    rng = np.random.default_rng(4)
    x = _channels_last(rng.standard_normal((4, 8, 10, 10)))
    v = _channels_last(rng.standard_normal((2, 4, 8, 10, 10)))
    y = dt.max_pool2d(dt.DualTensor(x, v), 2)
    monkeypatch.setattr(pool_kernels, "usable", lambda *a: False)
    y0 = dt.max_pool2d(dt.DualTensor(x, v), 2)
    assert np.array_equal(y.primal, y0.primal) and np.array_equal(y.tangent, y0.tangent)


@pytest.mark.parametrize("case", ["nchw", "3x3", "padded", "stride 1", "dilated", "3-d", "small"])
def test_only_the_cases_written_for_take_the_kernels(compiled, monkeypatch, case):
    monkeypatch.setattr(pool_kernels, "MIN_CELLS", 64 if case == "small" else 0)
    x = _channels_last(np.zeros((2, 4, 4, 4), np.float32))  # 128 cells
    geo = {"kernel": (2, 2), "stride": (2, 2), "pads": NO_PAD, "dilation": (1, 1)}
    assert pool_kernels.usable(x, *geo.values())
    if case == "nchw":
        x = np.zeros((2, 4, 4, 4), np.float32)
    elif case == "3x3":
        geo.update(kernel=(3, 3), stride=(3, 3))
    elif case == "padded":
        geo["pads"] = ((1, 1), (1, 1))
    elif case == "stride 1":
        geo["stride"] = (1, 2)
    elif case == "dilated":
        geo["dilation"] = (2, 1)
    elif case == "3-d":
        x = x[0]
    else:
        x = x[:, :, :2, :2]  # 32 cells
    assert not pool_kernels.usable(x, *geo.values())


def test_without_numba_the_array_code_runs(monkeypatch):
    monkeypatch.setattr(jit, "available", lambda: False)
    x = _channels_last(np.zeros((64, 64, 28, 28), np.float32))
    assert not pool_kernels.usable(x, (2, 2), (2, 2), NO_PAD, (1, 1))
