"""Where CuPy behaves differently from NumPy: each fix of issue 10's table, checked on CuPy (the
stand-in in tests/cupy_standin when no GPU is present) against NumPy."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import dualtensor as dt
from dualtensor.backend import to_host

cupy = pytest.importorskip("cupy")


def gpu(a):
    return cupy.asarray(a)


def test_projection_detects_failed_factorisations_the_same_way_on_both_backends():
    rng = np.random.default_rng(0)
    k, B, n = 4, 6, 5
    V = rng.standard_normal((k, B, n))
    V[3, 1] = V[0, 1] + V[2, 1]          # sample 1: dependent tangents, a singular Gram
    V[:, 4] = V[:, 4, :1] * np.ones(n)   # sample 4: every tangent the same direction up to scale
    V[1, 5] = 1e-9 * V[1, 5]             # sample 5: ill-conditioned, not singular
    d = rng.standard_normal((k, B))
    results, messages = [], []
    for to in (np.asarray, gpu):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            g = dt.fgrad.AGGREGATORS["projection"](to(d), to(V))
        results.append(to_host(g))
        messages.append([str(x.message) for x in w])
    assert messages[0] == messages[1] and "in 3 of 6 samples" in messages[0][0]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-9)
    # the fallback is the exact projection onto the span (least squares), not a broken factor's output
    for b in (1, 4):
        Vb = V[:, b]
        expected = np.linalg.pinv(Vb, rcond=1e-10) @ d[:, b]
        np.testing.assert_allclose(results[0][b], expected, rtol=1e-6, atol=1e-9)


def test_numpy_scalars_mix_with_device_arrays():
    x = dt.dual(gpu(np.arange(3.0, dtype=np.float32)), gpu(np.ones((2, 3), np.float32)))
    for out in (x * np.float32(2), dt.maximum(x, np.float64(0)), dt.clip(x, np.float32(-1), np.float32(1.5))):
        assert dt.backend.is_cupy(out.primal) and dt.backend.is_cupy(out.tangent)
    with pytest.raises(TypeError, match="cannot mix numpy and cupy"):
        x * np.ones(3, np.float32)


def test_out_of_range_index_arrays_raise_on_the_device_too():
    x = dt.dual(gpu(np.arange(4.0)), gpu(np.ones((2, 4))))
    with pytest.raises(IndexError, match="out of bounds"):
        x[gpu(np.array([0, 4]))]
    with pytest.raises(IndexError, match="out of bounds"):
        x[gpu(np.array([-5]))]
    y = x[gpu(np.array([3, -1, 0]))]
    assert to_host(y.primal).tolist() == [3.0, 3.0, 0.0]
    m = dt.dual(gpu(np.arange(12.0).reshape(3, 4)), gpu(np.ones((1, 3, 4))))
    with pytest.raises(IndexError):
        m[..., gpu(np.array([4]))]
    assert to_host(m[1:, gpu(np.array([3]))].primal).tolist() == [[7.0], [11.0]]


def test_device_and_host_operands_meet_the_projects_own_errors():
    from dualtensor import nn
    from dualtensor.nn import functional as F

    logits, y = np.zeros((2, 3), np.float32), gpu(np.array([0, 1]))
    with pytest.raises(TypeError, match="cross_entropy: cannot mix numpy and cupy"):
        F.cross_entropy(logits, y)
    host = nn.Linear(3, 2)
    device = nn.Linear(3, 2).to("gpu")
    host.load_state_dict(device.state_dict())  # values move onto the parameters' device
    assert isinstance(host.weight.data, np.ndarray)
    np.testing.assert_array_equal(host.weight.data, to_host(device.weight.data))
    device.load_state_dict({k: v + 1 for k, v in host.state_dict().items()})
    assert dt.backend.is_cupy(device.weight.data)
    np.testing.assert_array_equal(to_host(device.weight.data), host.weight.data + 1)


@pytest.mark.parametrize("make", ["sgd-momentum", "adam"])
def test_optimizer_state_follows_its_parameters_to_the_device(make):
    from dualtensor import nn, optim

    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if make == "sgd-momentum" else \
        optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()  # host state
    model.to("gpu")
    for p in model.parameters():
        p.grad = gpu(np.ones(p.data.shape, p.data.dtype))
    opt.step()
    states = [v for s in opt.state.values() for v in s.values() if hasattr(v, "shape")]
    assert states and all(dt.backend.is_cupy(v) for v in states)
    assert all(dt.backend.is_cupy(p.data) for p in model.parameters())


def test_broadcast_views_are_never_written():
    """CuPy's broadcast views (shared tangents, bias-only tangents) are writable: a write into one
    would change every sample at once. The same step on both backends must agree, and the shared
    tangents must come out unchanged."""
    from dualtensor import nn
    from dualtensor.nn import functional as F

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)), np.arange(6) % 10
    k, results = 3, []
    for to in (np.asarray, gpu):
        dt.set_default_dtype("float64")
        try:
            nn.init.manual_seed(0)
            model = dt.nn.models.mlp(64, width=16, depth=2)
        finally:
            dt.set_default_dtype("float32")
        if to is gpu:
            model.to("gpu")
        sizes = model.activation_sizes((1, 8, 8))
        one = rng.standard_normal((k, 1, sum(sizes))) if not results else results[0][2]
        V = (np if to is np.asarray else cupy).broadcast_to(to(one), (k, 6, sum(sizes)))  # shared by all samples
        before = to_host(V).copy()
        res = dt.activity_gradient(model, lambda lg, t: F.cross_entropy(lg, t, reduction="none"), to(x), to(y),
                                   tangents=V)
        np.testing.assert_array_equal(to_host(V), before)
        results.append(({n: to_host(g) for n, g in res.grads.items()}, to_host(res.d), one))
    for name in results[0][0]:
        np.testing.assert_allclose(results[1][0][name], results[0][0][name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
    # a bias-only tangent of layer_norm is returned as a broadcast view; using it downstream is safe
    xs = to_host(gpu(rng.standard_normal((4, 5))))
    w, b = np.ones(5), np.zeros(5)
    for to in (np.asarray, gpu):
        tb = to(rng.standard_normal((2, 5)))
        out = dt.layer_norm(to(xs), (5,), to(w), dt.dual(to(b), tb))
        out2 = out * 2.0 + out
        np.testing.assert_allclose(to_host(out2.tangent), 3 * np.broadcast_to(to_host(tb)[:, None], (2, 4, 5)))


def test_dropout_draws_on_the_device_and_recompute_refuses_what_it_cannot_replay():
    from dualtensor import nn
    from dualtensor.nn import functional as F

    import dualtensor.train as T

    config = T.TrainConfig(device="gpu", width=8, depth=1).resolved()
    model = T.build_model(config, (1, 8, 8), 10)
    model.blocks()[0].append(nn.Dropout(0.5))
    streams = T.RandomStreams(config, model)
    streams.start_epoch(1)
    drop = streams.dropout[0]
    assert dt.backend.rng_module(drop.rng) is cupy
    model.to("gpu")
    x = gpu(np.ones((4, 1, 8, 8), np.float32))
    y = gpu(np.arange(4))
    assert dt.backend.is_cupy(drop(x))  # the mask came from the device generator
    loss = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
    res = dt.activity_gradient(model, loss, x, y, k=2, rng=streams.next_tangents(), keep="tape",
                               return_estimate=True)
    assert dt.backend.is_cupy(res.tangents)  # keyed tangents, made on the device
    with pytest.raises(ValueError, match="keep='tape'"):
        dt.activity_gradient(model, loss, x, y, k=2, rng=streams.next_tangents(), keep="recompute")


def test_every_loss_checks_devices_and_a_list_target_joins_the_logits():
    from dualtensor.nn import functional as F

    with pytest.raises(TypeError, match="mse_loss: cannot mix numpy and cupy"):
        dt.mse_loss(np.zeros(3), gpu(np.zeros(3)))
    with pytest.raises(TypeError, match="mse_loss: cannot mix numpy and cupy"):
        dt.mse_loss(gpu(np.zeros(3)), np.zeros(3))
    loss = F.cross_entropy(gpu(np.zeros((2, 3))), [0, 2])
    assert dt.backend.is_cupy(loss) and float(loss) == pytest.approx(np.log(3))


def test_module_to_moves_a_dropout_generator_and_recompute_rewinds_a_legacy_one():
    from dualtensor import nn
    from dualtensor.nn import functional as F

    drop = nn.Dropout(0.5)
    drop.to("gpu")
    assert dt.backend.rng_module(drop.rng) is cupy
    assert dt.backend.is_cupy(drop(gpu(np.ones((2, 3), np.float32))))
    drop.to("cpu")
    assert dt.backend.rng_module(drop.rng) is np
    # keep="recompute" repeats the masks of a legacy RandomState too (the same gradients as keep="tape")
    grads = {}
    for keep in ("tape", "recompute"):
        nn.init.manual_seed(0)
        model = dt.nn.models.mlp(16, width=8, depth=1)
        model.blocks()[0].append(nn.Dropout(0.5))
        model.blocks()[0][-1].rng = np.random.RandomState(3)
        x, y = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32), np.arange(4)
        res = dt.activity_gradient(model, lambda lg, t: F.cross_entropy(lg, t, reduction="none"), x, y, k=2,
                                   rng=1, keep=keep)
        grads[keep] = res.grads
    for name in grads["tape"]:
        np.testing.assert_allclose(grads["recompute"][name], grads["tape"][name], rtol=1e-5, atol=1e-7)


def test_projection_keeps_a_non_finite_derivative_for_the_finite_check():
    d = gpu(np.array([1.0, np.nan]))
    V = gpu(np.eye(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = dt.fgrad.AGGREGATORS["projection"](d, V)  # no error from the solver: NaN reaches the caller
    assert np.isnan(to_host(g)).any()


@pytest.mark.parametrize("start, count", [(0, 5 * 8192), (100, 3000), (4000, 300), (8192 + 5000, 9000)])
def test_keyed_float32_normals_on_the_device_are_the_host_ones(start, count):
    """The float32 Box-Muller passes (dualtensor.fgrad.box_muller) on CuPy arrays: whole chunks and parts."""
    from dualtensor.fgrad.streams import keyed_entries, stream_key

    keys = [stream_key(1, 2, j, 0) for j in range(3)]
    host = keyed_entries("normal", keys, start, count, np.float32)
    dev = keyed_entries("normal", keys, start, count, np.float32, xp=cupy)
    assert dt.backend.is_cupy(dev) and dev.dtype == np.float32
    np.testing.assert_allclose(to_host(dev), host, rtol=1e-6, atol=1e-6)
