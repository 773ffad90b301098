"""Whole networks, differentiated w.r.t. every parameter AND the input at once.

For each network check_rules verifies, in float64: the JVP against central finite differences,
k stacked tangents against k single runs, linearity, symbolic-zero tangents, and the adjoint
identity between forward mode (JVP) and reverse mode (VJP).

The ReLU / max-pool kinks: the inputs come from fixed seeds, and each test verifies (``taps``) that
every ReLU pre-activation and every max-pool window is far enough (> 1e-4) from its kink or tie
that the finite differences (eps = 1e-6) never straddle one.
"""
import numpy as np
import pytest

import dualtensor as dt
from dualtensor.nn import functional as F
from opcheck import check_rules

MARGIN = 1e-4


def _param(rng, *shape, fan_in=None):
    fan_in = fan_in if fan_in is not None else (shape[-1] if len(shape) > 1 else 1)
    return rng.standard_normal(shape) / np.sqrt(fan_in)


def _check_relu_margin(pre):
    pre = np.asarray(pre)
    assert np.abs(pre).min() > MARGIN, "a ReLU pre-activation sits at its kink: pick another seed"


def _check_maxpool_margin(x, k):
    x = np.asarray(x)
    n, c, h, w = x.shape
    win = x[:, :, :h // k * k, :w // k * k].reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    top = np.sort(win.reshape(n, c, h // k, w // k, k * k), axis=-1)
    # a window that ReLU clamped to all zeros ties harmlessly: every entry has derivative 0 there
    gap = np.where(top[..., -1] == 0, np.inf, top[..., -1] - top[..., -2])
    assert gap.min() > MARGIN, "a max-pool window has a near tie: pick another seed"


# ---------------------------------------------------------------- (a) MLP

def mlp(x, w1, b1, w2, b2, w3, b3, target, taps=None):
    h = F.linear(x, w1, b1)
    if taps is not None:
        taps.append(("relu", h))
    h = F.relu(h)
    h = F.gelu(F.linear(h, w2, b2))
    return F.cross_entropy(F.linear(h, w3, b3), target)


def mlp_args(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 5))
    params = [_param(rng, 6, 5), _param(rng, 6), _param(rng, 6, 6), _param(rng, 6), _param(rng, 3, 6), _param(rng, 3)]
    target = np.array([0, 2, 1, 2])
    return [x, *params, target]


def _verify_taps(fn, args):
    taps = []
    fn(*args, taps=taps)
    for kind, a in taps:
        if kind == "relu":
            _check_relu_margin(a)
        else:
            _check_maxpool_margin(a, kind[1])


def test_mlp():
    args = mlp_args()
    _verify_taps(mlp, args)
    out = check_rules(mlp, args, diff=range(7))
    assert out.shape == (3,)


# ---------------------------------------------------------------- (b) conv net

def convnet(x, w1, c1, gamma, beta, w2, c2, wl, bl, target, bn="train", pool="avg", taps=None):
    h = F.conv2d(x, w1, c1, padding=1)                                     # (N, 3, 6, 6)
    if bn == "train":
        h = F.batch_norm(h, None, None, gamma, beta, training=True)
    else:
        rm, rv = np.linspace(-0.2, 0.3, 3, dtype=x.dtype), np.linspace(0.5, 1.5, 3, dtype=x.dtype)  # constants
        h = F.batch_norm(h, rm, rv, gamma, beta, training=False)
    if taps is not None:
        taps.append(("relu", h))
    h = F.relu(h)
    if taps is not None:
        taps.append((("pool", 2), h))
    h = F.max_pool2d(h, 2)                                                  # (N, 3, 3, 3)
    h = F.conv2d(h, w2, c2)                                                 # (N, 4, 2, 2)
    h = F.avg_pool2d(h, 2) if pool == "avg" else F.adaptive_avg_pool2d(h, 1)  # (N, 4, 1, 1)
    h = dt.flatten(h, 1)                                                    # (N, 4)
    return F.cross_entropy(F.linear(h, wl, bl), target)


def convnet_args(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 6, 6))
    params = [_param(rng, 3, 2, 3, 3, fan_in=18), _param(rng, 3), 1 + 0.1 * rng.standard_normal(3),
              0.1 * rng.standard_normal(3), _param(rng, 4, 3, 2, 2, fan_in=12), _param(rng, 4),
              _param(rng, 3, 4), _param(rng, 3)]
    target = np.array([1, 2])
    return [x, *params, target]


@pytest.mark.parametrize("bn, pool", [("train", "avg"), ("eval", "adaptive"), ("train", "adaptive")])
def test_convnet(bn, pool):
    args = convnet_args()

    def f(*a, taps=None):
        return convnet(*a, bn=bn, pool=pool, taps=taps)

    _verify_taps(f, args)
    # Training-mode batch norm subtracts the batch mean, so the first conv's bias (argument 2) has an
    # exactly zero derivative there; its JVP is pure rounding noise (~1e-16) that relative checks cannot
    # judge, so it is a constant in that case (as in real nets, which use bias=False before batch norm).
    diff = [i for i in range(9) if not (bn == "train" and i == 2)]
    check_rules(f, args, diff=diff)


# ---------------------------------------------------------------- (c) transformer encoder layer

HEADS = 2


def encoder(x, g1, b1, wqkv, bqkv, wo, bo, g2, b2, w1, c1, w2, c2, wc, bc, target, causal=False, drop=0.0):
    n, t, d = x.shape
    hd = d // HEADS
    h = F.layer_norm(x, (d,), g1, b1)
    qkv = F.linear(h, wqkv, bqkv)                                           # (N, T, 3D)
    qkv = dt.transpose(dt.reshape(qkv, (n, t, 3, HEADS, hd)), (2, 0, 3, 1, 4))  # (3, N, H, T, hd)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)  # (N, H, T, hd)
    a = dt.reshape(dt.transpose(a, (0, 2, 1, 3)), (n, t, d))
    a = F.linear(a, wo, bo)
    if drop:
        a = F.dropout(a, drop, training=True, rng=123)   # a fixed seed: the same mask in every call
    x = x + a
    h = F.layer_norm(x, (d,), g2, b2)
    m = F.linear(F.gelu(F.linear(h, w1, c1)), w2, c2)
    if drop:
        m = F.dropout(m, drop, training=True, rng=456)
    x = x + m
    pooled = dt.mean(x, 1)                                                  # (N, D)
    return F.cross_entropy(F.linear(pooled, wc, bc), target)


def encoder_args(seed=0, n=2, t=4, d=8, hidden=16, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, d))
    params = [1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d),
              _param(rng, 3 * d, d), _param(rng, 3 * d), _param(rng, d, d), _param(rng, d),
              1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d),
              _param(rng, hidden, d), _param(rng, hidden), _param(rng, d, hidden), _param(rng, d),
              _param(rng, classes, d), _param(rng, classes)]
    target = np.arange(n) % classes
    return [x, *params, target]


@pytest.mark.parametrize("causal, drop", [(False, 0.0), (True, 0.25)])
def test_transformer_encoder_layer(causal, drop):
    args = encoder_args()
    check_rules(lambda *a: encoder(*a, causal=causal, drop=drop), args, diff=range(15))


# ---------------------------------------------------------------- float32 end to end

@pytest.mark.parametrize("name", ["mlp", "convnet", "encoder"])
def test_float32_end_to_end(name):
    fn, args = {"mlp": (mlp, mlp_args()), "convnet": (convnet, convnet_args()),
                "encoder": (encoder, encoder_args())}[name]
    args32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in args]
    rng = np.random.default_rng(1)
    ndiff = len(args) - 1
    duals = [dt.dual(a, rng.standard_normal((2, *a.shape)).astype(np.float32)) for a in args32[:ndiff]]
    out = fn(*duals, args32[-1])
    assert out.primal.dtype == np.float32 and out.tangent.dtype == np.float32
    # close to the float64 result
    rng = np.random.default_rng(1)
    duals64 = [dt.dual(a, rng.standard_normal((2, *a.shape))) for a in args[:ndiff]]
    out64 = fn(*duals64, args[-1])
    np.testing.assert_allclose(out.primal, out64.primal, rtol=1e-4)
    np.testing.assert_allclose(out.tangent, out64.tangent, rtol=1e-3, atol=1e-4)
