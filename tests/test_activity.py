"""Activity perturbation: the real forward-mode estimate equals the simulated one (exact per-sample
activation gradients from reverse mode projected on the same tangents), tape == recompute, full-rank
tangents recover backprop, batch-norm statistics are updated once per step, and the paper's models
run one step for every aggregator and sampler."""
import copy
import warnings

import numpy as np
import pytest

import dualtensor as dt
from dualtensor import nn
from dualtensor.fgrad import BatchNormCouplingWarning
from dualtensor.fgrad.activity import activation_sizes, activity_gradient, exact_activation_gradients
from dualtensor.nn import functional as F
from dualtensor.nn import functional_call
from dualtensor.nn.models import BasicBlock, mlp, resnet18, vit
from dualtensor.nn.models.blocked import Blocked

F64 = np.float64
AGGREGATORS = ["single", "sum", "mean", "normalized", "projection"]


def per_sample_ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _randomize(model, rng, scale=0.1):
    """Non-trivial values in every parameter and batch-norm buffer (biases, norms, class token...)."""
    for p in model.parameters():
        p.data[...] += scale * rng.standard_normal(p.data.shape).astype(p.data.dtype)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = scale * rng.standard_normal(m.running_mean.shape)
            m.running_var[...] = 1 + scale * rng.random(m.running_var.shape)
    return model


def small_mlp(rng):
    return _randomize(mlp(12, 8, 2, 3).astype(F64), rng)


def small_convnet(rng):
    blocks = [nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
              nn.Sequential(BasicBlock(3, 3), nn.MaxPool2d(2)),
              nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
              nn.Sequential(nn.Flatten(), nn.Linear(4, 3))]
    return _randomize(Blocked(blocks).astype(F64), rng)


def small_vit(rng):
    return _randomize(vit(image_size=8, patch_size=4, in_channels=1, classes=3, dim=16, depth=2, heads=2,
                          mlp_dim=32).astype(F64), rng)


def _data(rng, model_name, B=3):
    shape = {"mlp": (B, 12), "conv": (B, 1, 6, 6), "vit": (B, 1, 8, 8)}[model_name]
    return rng.standard_normal(shape), rng.integers(0, 3, B)


MAKERS = {"mlp": small_mlp, "conv": small_convnet, "vit": small_vit}


def _assert_grads_close(a, b, rtol=1e-8, atol=1e-12):
    assert set(a) == set(b)
    for n in a:
        assert a[n].shape == b[n].shape, n
        np.testing.assert_allclose(a[n], b[n], rtol=rtol, atol=atol, err_msg=n)


def _injected_losses(model, x, y, eps):
    """Per-sample losses with ``eps[i]`` added to block i's output (an independent reference)."""
    h = x
    for b, e in zip(model.blocks(), eps):
        h = b(h) + e
    return per_sample_ce(h, y)


@pytest.mark.parametrize("name", ["mlp", "conv", "vit"])
def test_real_equals_simulated(name):
    rng = np.random.default_rng(0)
    model = MAKERS[name](rng).eval()
    x, y = _data(rng, name)
    n = sum(activation_sizes(model.blocks(), x))
    k = 4
    V = rng.standard_normal((k, x.shape[0], n))
    kw = dict(tangents=V, return_estimate=True)
    real = activity_gradient(model, per_sample_ce, x, y, **kw)
    sim = activity_gradient(model, per_sample_ce, x, y, simulated=True, **kw)
    assert real.d.shape == (k, x.shape[0]) and sum(real.sizes) == n
    np.testing.assert_allclose(real.d, sim.d, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(real.estimate, sim.estimate, rtol=1e-8, atol=1e-12)
    _assert_grads_close(real.grads, sim.grads)
    assert set(real.grads) == {n for n, _ in model.named_parameters()}
    for pn, p in model.named_parameters():
        assert real.grads[pn].shape == p.data.shape and real.grads[pn].dtype == F64
    assert real.loss == pytest.approx(float(per_sample_ce(model(x), y).mean()), rel=1e-12)
    # an independent reference for d: finite differences of the per-sample losses along V_j
    shapes = [(x.shape[0],) + s for s in _out_shapes(model, x)]
    for j in range(k):
        parts, off = [], 0
        for s in shapes:
            m = int(np.prod(s[1:]))
            parts.append(V[j, :, off:off + m].reshape(s))
            off += m
        h = 1e-6
        fp = _injected_losses(model, x, y, [h * p for p in parts])
        fm = _injected_losses(model, x, y, [-h * p for p in parts])
        np.testing.assert_allclose(real.d[j], (fp - fm) / (2 * h), rtol=1e-6, atol=1e-8)
    # keep="recompute" gives the same gradients
    rec = activity_gradient(model, per_sample_ce, x, y, keep="recompute", **kw)
    _assert_grads_close(real.grads, rec.grads, rtol=1e-11)
    np.testing.assert_array_equal(real.d, rec.d)


def _out_shapes(model, x):
    h, out = x, []
    for b in model.blocks():
        h = b(h)
        out.append(h.shape[1:])
    return out


def test_grads_are_block_local_vjps_of_the_estimate():
    """Parameter gradients = each block's VJP of (estimate / B), checked with dt.value_and_grad."""
    rng = np.random.default_rng(1)
    model = small_convnet(rng).eval()
    x, y = _data(rng, "conv")
    B = x.shape[0]
    res = activity_gradient(model, per_sample_ce, x, y, k=3, rng=7, return_estimate=True)
    h, off = x, 0
    for b in model.blocks():
        names = [n for n, _ in b.named_parameters()]
        P = {n: p.data for n, p in b.named_parameters()}
        out = b(h)
        m = int(np.prod(out.shape[1:]))
        c = res.estimate[:, off:off + m].reshape(out.shape) / B
        off += m
        _, g = dt.value_and_grad(lambda P, h=h, b=b, c=c: (functional_call(b, P, h) * c).sum())(P)
        full = dict(model.named_parameters())
        for n, p in b.named_parameters():
            fname = next(fn for fn, fp in full.items() if fp is p)
            np.testing.assert_allclose(res.grads[fname], g[n], rtol=1e-10, atol=1e-14)
        assert names
        h = out


@pytest.mark.parametrize("sampler", ["orthonormal", "basis"])
def test_full_rank_tangents_recover_backprop(sampler):
    rng = np.random.default_rng(2)
    model = small_mlp(rng)
    x, y = _data(rng, "mlp", B=4)
    n = sum(activation_sizes(model.blocks(), x))
    assert n == 19
    P = {pn: p.data for pn, p in model.named_parameters()}
    _, exact = dt.value_and_grad(lambda P: per_sample_ce(functional_call(model, P, x), y).mean())(P)
    for keep in ("tape", "recompute"):
        for simulated in (False, True):
            res = activity_gradient(model, per_sample_ce, x, y, k=n, sampler=sampler, rng=3, keep=keep,
                                    simulated=simulated)
            _assert_grads_close(res.grads, exact, rtol=1e-9, atol=1e-12)
    # more tangents than dimensions: a rank-deficient Gram falls back to least squares, still exact
    V = rng.standard_normal((n + 2, 4, n))
    with pytest.warns(RuntimeWarning, match="least-squares"):
        res = activity_gradient(model, per_sample_ce, x, y, tangents=V)
    _assert_grads_close(res.grads, exact, rtol=1e-7, atol=1e-10)
    # the per-sample estimate is the exact per-sample activation gradient
    res = activity_gradient(model, per_sample_ce, x, y, k=n, sampler="orthonormal", rng=4, return_estimate=True)
    shapes = [(4,) + s for s in _out_shapes(model, x)]
    ex = exact_activation_gradients(model.blocks(), per_sample_ce, x, y, shapes)
    np.testing.assert_allclose(res.estimate, np.concatenate([e.reshape(4, -1) for e in ex], 1), rtol=1e-9,
                               atol=1e-12)


def _train_model(rng):
    """MLP with dropout and a conv net with batch norm, in train mode."""
    blocks = [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.3, seed=1)),
              nn.Sequential(nn.Flatten(), nn.Linear(72, 6), nn.BatchNorm1d(6), nn.ReLU()),
              nn.Sequential(nn.Dropout(0.2, seed=2), nn.Linear(6, 3))]
    return _randomize(Blocked(blocks).astype(F64), rng).train()


def test_train_mode_tape_equals_recompute_and_running_stats_once():
    rng = np.random.default_rng(3)
    base = _train_model(rng)
    x, y = _data(rng, "conv", B=4)
    ref = copy.deepcopy(base)
    ref(x)  # one plain forward: the running statistics after exactly one update
    V = rng.standard_normal((3, 4, sum(activation_sizes(base.blocks(), x))))
    results = {}
    for keep in ("tape", "recompute"):
        for simulated in (False, True):
            m = copy.deepcopy(base)
            results[keep, simulated] = activity_gradient(m, per_sample_ce, x, y, tangents=V, keep=keep,
                                                         simulated=simulated, return_estimate=True)
            for (n, b), (_, rb) in zip(m.named_buffers(), ref.named_buffers()):
                np.testing.assert_allclose(b, rb, rtol=1e-13, atol=1e-15, err_msg=n)
            # dropout generators advanced exactly as by one forward pass
            for d, rd in zip([mm for mm in m.modules() if isinstance(mm, nn.Dropout)],
                             [mm for mm in ref.modules() if isinstance(mm, nn.Dropout)]):
                assert d.rng.bit_generator.state == rd.rng.bit_generator.state
    _assert_grads_close(results["tape", False].grads, results["recompute", False].grads, rtol=1e-11)
    _assert_grads_close(results["tape", True].grads, results["recompute", True].grads, rtol=1e-11)
    np.testing.assert_array_equal(results["tape", False].d, results["recompute", False].d)
    # train-mode batch norm couples the samples, so d differs from the per-sample simulation; the
    # loss (same masks, same statistics) is the same
    assert results["tape", False].loss == pytest.approx(results["tape", True].loss, rel=1e-14)


def test_dropout_real_equals_simulated_without_batch_coupling():
    rng = np.random.default_rng(4)
    blocks = [nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Dropout(0.4, seed=5)), nn.Sequential(nn.Linear(7, 3))]
    model = Blocked(blocks).astype(F64).train()
    x, y = rng.standard_normal((3, 5)), rng.integers(0, 3, 3)
    V = rng.standard_normal((2, 3, 10))
    a = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, tangents=V)
    b = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, tangents=V, simulated=True)
    np.testing.assert_allclose(a.d, b.d, rtol=1e-10)
    _assert_grads_close(a.grads, b.grads)


def test_samplers_aggregators_options_small():
    rng = np.random.default_rng(5)
    model = small_vit(rng).eval()
    x, y = _data(rng, "vit", B=2)
    # seeded: the same seed gives the same tangents and gradients
    a = activity_gradient(model, per_sample_ce, x, y, k=3, rng=11, return_estimate=True)
    b = activity_gradient(model, per_sample_ce, x, y, k=3, rng=11, return_estimate=True)
    np.testing.assert_array_equal(a.tangents, b.tangents)
    _assert_grads_close(a.grads, b.grads, rtol=0)
    # the tangents drawn per block are different blocks of one stream (not the same seed restarted)
    s = a.sizes
    assert s == [80, 3] and not np.allclose(a.tangents[:, :, :3], a.tangents[:, :, 80:83])
    # shared tangents: one draw for every sample
    sh = activity_gradient(model, per_sample_ce, x, y, k=3, rng=1, shared=True, return_estimate=True)
    np.testing.assert_array_equal(sh.tangents[:, 0], sh.tangents[:, 1])
    assert sh.tangents.strides[1] == 0  # the blocks' shared draws side by side stay one broadcast row
    sim = activity_gradient(model, per_sample_ce, x, y, tangents=np.ascontiguousarray(sh.tangents), simulated=True)
    _assert_grads_close(sh.grads, sim.grads)
    full = activity_gradient(model, per_sample_ce, x, y, tangents=np.ascontiguousarray(sh.tangents),
                             return_estimate=True)
    np.testing.assert_allclose(sh.estimate, full.estimate, rtol=1e-10, atol=1e-14)
    _assert_grads_close(sh.grads, full.grads)
    # structured samplers over the whole activation vector
    o = activity_gradient(model, per_sample_ce, x, y, k=4, sampler="orthonormal", rng=2, return_estimate=True)
    G = np.einsum("kbn,jbn->bkj", o.tangents, o.tangents)
    np.testing.assert_allclose(G, np.broadcast_to(np.eye(4), G.shape), atol=1e-12)
    c = activity_gradient(model, per_sample_ce, x, y, k=3, sampler=dt.fgrad.get_sampler("cone", alpha=0.3), rng=2)
    assert np.all(np.isfinite(c.d))
    # scale=True: the projection times E[chi_n]/E[chi_k]
    p = activity_gradient(model, per_sample_ce, x, y, k=3, rng=11)
    ps = activity_gradient(model, per_sample_ce, x, y, k=3, rng=11, scale=True)
    from dualtensor.fgrad.aggregators import chi_mean_ratio
    r = chi_mean_ratio(sum(s), 3)
    for n in p.grads:
        np.testing.assert_allclose(ps.grads[n], p.grads[n] * r, rtol=1e-10, atol=1e-15)
    # aggregators: relationships between the estimates for the same tangents
    est = {agg: activity_gradient(model, per_sample_ce, x, y, k=3, rng=11, aggregate=agg,
                                  return_estimate=True).estimate for agg in AGGREGATORS}
    np.testing.assert_allclose(est["mean"] * 3, est["sum"], rtol=1e-12)
    V = a.tangents
    np.testing.assert_allclose(est["single"], a.d[0][:, None] * V[0], rtol=1e-12)
    np.testing.assert_allclose(est["projection"], a.estimate, rtol=1e-12)


def test_errors():
    rng = np.random.default_rng(6)
    model = small_mlp(rng)
    x, y = _data(rng, "mlp")
    with pytest.raises(ValueError, match="per-sample losses of shape \\(3,\\)"):
        activity_gradient(model, lambda o, y: F.cross_entropy(o, y), x, y, k=2)
    with pytest.raises(ValueError, match="per-sample losses"):
        activity_gradient(model, lambda o, y: F.cross_entropy(o, y, reduction="sum"), x, y, k=2)
    with pytest.raises(ValueError, match="keep"):
        activity_gradient(model, per_sample_ce, x, y, k=2, keep="nope")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        activity_gradient(model, per_sample_ce, x, y)
    with pytest.raises(ValueError, match="the blocks produce 19"):
        activity_gradient(model, per_sample_ce, x, y, tangents=rng.standard_normal((2, 3, 25)))
    with pytest.raises(ValueError, match="entries per sample"):
        activity_gradient(model, per_sample_ce, x, y, tangents=rng.standard_normal((2, 3, 9)))
    with pytest.raises(ValueError, match="shape"):
        activity_gradient(model, per_sample_ce, x, y, tangents=rng.standard_normal((2, 4, 19)))
    with pytest.raises(ValueError, match="unknown sampler"):
        activity_gradient(model, per_sample_ce, x, y, k=2, sampler="nope")
    with pytest.raises(ValueError, match="unknown aggregator"):
        activity_gradient(model, per_sample_ce, x, y, k=2, aggregate="nope")
    with pytest.raises(ValueError, match="orthonormal"):
        activity_gradient(model, per_sample_ce, x, y, k=20, sampler="orthonormal")


# ----------------------------------------------------------------------- the paper's models

def _ce32(out, y):
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["mnist", "cifar"])
@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_paper_models_one_step(arch, shape):
    rng = np.random.default_rng(7)
    c = shape[0]
    model = resnet18(in_channels=c) if arch == "resnet18" else vit(image_size=shape[1], in_channels=c)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 2)
    names = {n for n, _ in model.named_parameters()}
    sizes = activation_sizes(model.blocks(), x)
    n = sum(sizes)
    model.train()
    bufs = {bn: b.copy() for bn, b in model.named_buffers()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        warnings.simplefilter("always", BatchNormCouplingWarning)  # resnet18's train-mode batch norms
        res = activity_gradient(model, _ce32, x, y, k=2, rng=0, aggregate="single", return_estimate=True)
    assert [w.category for w in caught] == ([BatchNormCouplingWarning] if arch == "resnet18" else [])
    assert set(res.grads) == names and res.d.shape == (2, 2) and res.estimate.shape == (2, n)
    for pn, p in model.named_parameters():
        g = res.grads[pn]
        assert g.shape == p.data.shape and g.dtype == np.float32 and np.all(np.isfinite(g)), pn
    if arch == "resnet18":  # batch-norm statistics moved, once
        stem_bn = model.blocks()[0][1]
        want = 0.9 * bufs["body.0.1.running_mean"] + 0.1 * model.blocks()[0][0](x).mean(axis=(0, 2, 3))
        np.testing.assert_allclose(stem_bn.running_mean, want, rtol=1e-4, atol=1e-6)
    # the other aggregators (eval mode), alternating the two i.i.d. samplers
    model.eval()
    for i, agg in enumerate(["sum", "mean", "normalized"]):
        r = activity_gradient(model, _ce32, x, y, k=2, rng=i, aggregate=agg, return_estimate=True,
                              sampler="rademacher" if i % 2 == 0 else "normal")
        assert set(r.grads) == names and all(np.all(np.isfinite(g)) for g in r.grads.values())
        if i % 2 == 0:
            assert set(np.unique(r.tangents)) == {-1.0, 1.0}
    # identical tangents (the same seed): forward mode == simulation for the projection; in float64
    # (tight) for the MNIST shape, in float32 (to float32 accuracy) for the CIFAR shape, to save time
    tight = c == 1
    m = copy.deepcopy(model).astype(F64) if tight else model
    xx = x.astype(F64) if tight else x
    kw = dict(k=2, sampler="rademacher", rng=5, return_estimate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ill-conditioning fallback for k=2 tangents
        real = activity_gradient(m, _ce32, xx, y, **kw)
        sim = activity_gradient(m, _ce32, xx, y, simulated=True, **kw)
    np.testing.assert_array_equal(real.tangents, sim.tangents)
    if tight:
        np.testing.assert_allclose(real.d, sim.d, rtol=1e-8)
        np.testing.assert_allclose(real.estimate, sim.estimate, rtol=1e-7, atol=1e-14)
        _assert_grads_close(real.grads, sim.grads, rtol=1e-7, atol=1e-12)
    else:
        np.testing.assert_allclose(real.d, sim.d, rtol=1e-4, atol=1e-4 * np.abs(sim.d).max())
        for pn in names:
            a, b = real.grads[pn], sim.grads[pn]
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max() + 1e-12, err_msg=pn)


@pytest.mark.parametrize("sampler", ["normal", "rademacher", "orthonormal", "basis"])
def test_activity_tangents_are_the_ones_activity_gradient_draws(sampler):
    from dualtensor.fgrad.activity import activity_tangents, draws_per_block

    model = dt.nn.models.mlp(64, width=16, depth=2)
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    y = np.arange(5) % 10
    res = dt.activity_gradient(model, per_sample_ce, x, y, k=3, sampler=sampler, rng=7, return_estimate=True)
    parts = activity_tangents(sampler, 3, res.sizes, np.random.default_rng(7), dtype=np.float32, xp=np, batch=5)
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), res.tangents)
    assert draws_per_block(sampler) == (sampler in ("normal", "rademacher"))
