"""The paper's batch-shared activity estimator (``estimator="batch"``) and batch norm's coupling."""
import copy

import numpy as np
import pytest

import dualtensor as dt
from dualtensor import nn
from dualtensor.fgrad import BatchNormCouplingWarning, activity_gradient
from dualtensor.fgrad.activity import activation_sizes, exact_activation_gradients
from dualtensor.nn import functional as F
from dualtensor.nn import functional_call
from dualtensor.nn.models import mlp
from dualtensor.nn.models.blocked import Blocked

F64 = np.float64


def per_sample_ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def bn_net(seed=0):
    """A conv net whose batch norms sit downstream of injections, in train mode."""
    dt.nn.init.manual_seed(seed)
    blocks = [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2)),
              nn.Sequential(nn.Flatten(), nn.Linear(18, 5), nn.BatchNorm1d(5), nn.ReLU()),
              nn.Sequential(nn.Linear(5, 3))]
    return Blocked(blocks).astype(F64).train()


def shared(V):
    """(k, B, n) tangents whose rows are all row 0."""
    return np.broadcast_to(V[:, :1], V.shape)


def injected_mean_loss(model, x, y, parts):
    h = x
    for b, e in zip(model.blocks(), parts):
        h = b(h) + e
    return float(per_sample_ce(h, y).mean())


def split_parts(model, x, v):
    """One shared tangent v (n,) as per-block arrays broadcast over the batch."""
    h, parts, off = x, [], 0
    for b in model.blocks():
        h = b(h)
        m = int(np.prod(h.shape[1:]))
        parts.append(np.broadcast_to(v[off:off + m].reshape(h.shape[1:]), h.shape))
        off += m
    return parts


@pytest.mark.parametrize("B", [2, 5])
def test_batch_estimator_real_equals_simulated_in_train_mode(B):
    rng = np.random.default_rng(B)
    model = bn_net()
    x, y = rng.standard_normal((B, 1, 6, 6)), rng.integers(0, 3, B)
    n = sum(activation_sizes(model.blocks(), x))
    V = shared(rng.standard_normal((4, B, n)))
    kw = dict(tangents=V, estimator="batch", return_estimate=True)
    real = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, **kw)
    sim = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, simulated=True, **kw)
    np.testing.assert_allclose(real.d.mean(1), sim.d.mean(1), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(real.estimate, sim.estimate, rtol=1e-8, atol=1e-12)
    for name in real.grads:
        np.testing.assert_allclose(real.grads[name], sim.grads[name], rtol=1e-8, atol=1e-12, err_msg=name)
    assert real.estimate.shape == (1, n)
    # independent reference: central differences of the batch-mean loss along each shared tangent
    for j in range(4):
        h = 1e-6
        fp = injected_mean_loss(copy.deepcopy(model), x, y, [h * p for p in split_parts(model, x, V[j, 0])])
        fm = injected_mean_loss(copy.deepcopy(model), x, y, [-h * p for p in split_parts(model, x, V[j, 0])])
        assert real.d[j].mean() == pytest.approx((fp - fm) / (2 * h), rel=1e-6, abs=1e-9)


def test_per_sample_estimator_differs_under_train_mode_batch_norm_and_warns():
    rng = np.random.default_rng(1)
    model = bn_net()
    x, y = rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 3, 4)
    V = rng.standard_normal((3, 4, sum(activation_sizes(model.blocks(), x))))
    with pytest.warns(BatchNormCouplingWarning, match="block 2 holds a train-mode batch norm"):
        real = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, tangents=V)
    with pytest.warns(BatchNormCouplingWarning):
        sim = activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, tangents=V, simulated=True)
    rel = np.abs(real.d - sim.d).max() / np.abs(sim.d).max()
    assert rel > 1e-3  # the coupling is real, not rounding
    import warnings
    with warnings.catch_warnings():  # eval mode, or the batch estimator: no warning
        warnings.simplefilter("error", BatchNormCouplingWarning)
        activity_gradient(copy.deepcopy(model).eval(), per_sample_ce, x, y, tangents=V)
        activity_gradient(copy.deepcopy(model), per_sample_ce, x, y, tangents=shared(V), estimator="batch")


@pytest.mark.parametrize("simulated", [False, True])
def test_full_rank_batch_estimate_is_the_mean_gradient_broadcast(simulated):
    """With n orthonormal tangents ê is the exact gradient of the mean loss w.r.t. the shared
    activation, and each block's gradient is the VJP of ê broadcast to every sample (not / B)."""
    rng = np.random.default_rng(2)
    dt.nn.init.manual_seed(2)
    model = mlp(12, 8, 2, 3).astype(F64)
    B = 4
    x, y = rng.standard_normal((B, 12)), rng.integers(0, 3, B)
    n = sum(activation_sizes(model.blocks(), x))
    res = activity_gradient(model, per_sample_ce, x, y, k=n, sampler="orthonormal", rng=3, estimator="batch",
                            simulated=simulated, return_estimate=True)
    h, shapes = x, []
    for b in model.blocks():
        h = b(h)
        shapes.append(h.shape)
    g_bar = np.concatenate([e.reshape(B, -1) for e in exact_activation_gradients(model.blocks(), per_sample_ce,
                                                                                 x, y, shapes)], 1).mean(0)
    np.testing.assert_allclose(res.estimate[0], g_bar, rtol=1e-9, atol=1e-12)
    h, off, full = x, 0, dict(model.named_parameters())
    for b, s in zip(model.blocks(), shapes):
        m = int(np.prod(s[1:]))
        c = np.broadcast_to(g_bar[off:off + m].reshape(s[1:]), s)
        off += m
        P = {pn: p.data for pn, p in b.named_parameters()}
        _, g = dt.value_and_grad(lambda P, h=h, b=b, c=c: (functional_call(b, P, h) * c).sum())(P)
        for pn, p in b.named_parameters():
            fname = next(fn for fn, fp in full.items() if fp is p)
            np.testing.assert_allclose(res.grads[fname], g[pn], rtol=1e-9, atol=1e-12, err_msg=fname)
        h = b(h)


def test_batch_estimator_draws_shared_tangents_and_stacks():
    """The batch estimator is shared-tangent per-sample aggregation of the batch-mean d, and k
    stacked tangents equal k one-tangent estimates (mean aggregator: the average of them)."""
    rng = np.random.default_rng(4)
    dt.nn.init.manual_seed(4)
    model = mlp(6, 5, 1, 3).astype(F64)
    x, y = rng.standard_normal((3, 6)), rng.integers(0, 3, 3)
    n = sum(activation_sizes(model.blocks(), x))
    V = shared(rng.standard_normal((3, 3, n)))
    whole = activity_gradient(model, per_sample_ce, x, y, tangents=V, aggregate="mean", estimator="batch")
    ones = [activity_gradient(model, per_sample_ce, x, y, tangents=V[j:j + 1], aggregate="mean", estimator="batch")
            for j in range(3)]
    for name in whole.grads:
        np.testing.assert_allclose(whole.grads[name], sum(o.grads[name] for o in ones) / 3, rtol=1e-10,
                                   atol=1e-13)
    drawn = activity_gradient(model, per_sample_ce, x, y, k=3, rng=5, estimator="batch", return_estimate=True)
    np.testing.assert_array_equal(drawn.tangents[:, 0], drawn.tangents[:, 2])


def test_batch_estimator_errors():
    model = mlp(6, 5, 1, 3).astype(F64)
    x, y = np.ones((3, 6)), np.array([0, 1, 2])
    with pytest.raises(ValueError, match="estimator must be one of per-sample, batch"):
        activity_gradient(model, per_sample_ce, x, y, k=2, estimator="paper")
    V = np.random.default_rng(0).standard_normal((2, 3, 18))
    with pytest.raises(ValueError, match="differ between samples"):
        activity_gradient(model, per_sample_ce, x, y, tangents=V, estimator="batch")
