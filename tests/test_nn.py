"""nn: Module mechanics, and every layer in the three modes (plain arrays, forward mode with
DualTensor inputs/parameters, reverse mode on the tape) checked against finite differences and
plain NumPy references."""
import math

import numpy as np
import pytest

import dualtensor as dt
from dualtensor import nn
from dualtensor.nn import functional_call
from dualtensor.tensor import DualTensor, Traced

F64 = np.float64


# ----------------------------------------------------------------------------- helpers

def params_of(m):
    return {n: p.data.copy() for n, p in m.named_parameters()}


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def _call(m, params, *xs):
    return _out(functional_call(m, params, *xs))


def check_modes(m, xs, seed=0, k=3, rtol=1e-6, atol=1e-8, params_tangents=True):
    """The same module code on plain arrays, DualTensor inputs+parameters (JVP vs central FD)
    and the reverse tape (gradient vs the JVP-independent FD directional derivative)."""
    rng = np.random.default_rng(seed)
    P = params_of(m)
    plain = _call(m, P, *xs)
    assert type(plain) is np.ndarray
    # forward mode: tangents on every input and every parameter
    txs = [rng.standard_normal((k, *x.shape)) for x in xs]
    tP = {n: rng.standard_normal((k, *v.shape)) * (1.0 if params_tangents else 0.0) for n, v in P.items()}
    out = _call(m, {n: DualTensor(v, tP[n]) for n, v in P.items()}, *[DualTensor(x, t) for x, t in zip(xs, txs)])
    assert type(out) is DualTensor and out.k == k
    np.testing.assert_allclose(out.primal, plain, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    for j in range(k):
        fp = _call(m, {n: v + eps * tP[n][j] for n, v in P.items()}, *[x + eps * t[j] for x, t in zip(xs, txs)])
        fm = _call(m, {n: v - eps * tP[n][j] for n, v in P.items()}, *[x - eps * t[j] for x, t in zip(xs, txs)])
        np.testing.assert_allclose(out.tangent_array()[j], (fp - fm) / (2 * eps), rtol=rtol, atol=atol)
    # DualTensor input only (parameters stay arrays): a tangent of the right shape
    only_x = _out(m(*[DualTensor(x, t) for x, t in zip(xs, txs)]))
    assert type(only_x) is DualTensor and only_x.tangent_array().shape == (k, *plain.shape)
    # reverse mode
    w = rng.standard_normal(plain.shape)

    def f(P, *xs):
        return (_call(m, P, *xs) * w).sum()

    nx = len(xs)
    val, grads = dt.value_and_grad(f, argnums=tuple(range(nx + 1)))(P, *xs)
    np.testing.assert_allclose(val, (plain * w).sum(), rtol=1e-12)
    gP, gxs = grads[0], grads[1:]
    assert set(gP) == set(P)
    for n in P:
        assert gP[n].shape == P[n].shape
    for _ in range(2):
        vP = {n: rng.standard_normal(v.shape) for n, v in P.items()}
        vx = [rng.standard_normal(x.shape) for x in xs]
        fp = f({n: v + eps * vP[n] for n, v in P.items()}, *[x + eps * v for x, v in zip(xs, vx)])
        fm = f({n: v - eps * vP[n] for n, v in P.items()}, *[x - eps * v for x, v in zip(xs, vx)])
        lhs = sum(float((gP[n] * vP[n]).sum()) for n in P) + sum(float((g * v).sum()) for g, v in zip(gxs, vx))
        np.testing.assert_allclose(lhs, (fp - fm) / (2 * eps), rtol=rtol, atol=atol)
    return plain, out


def x64(rng, *shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------------------- Module mechanics

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm1d(5)
        self.scale = nn.Parameter(np.ones(5, np.float32))
        self.blocks = nn.ModuleList([nn.Linear(5, 5), nn.Sequential(nn.Linear(5, 3), nn.Identity())])

    def forward(self, x):
        h = self.bn(self.act(self.fc1(x))) * self.scale
        for b in self.blocks:
            h = b(h)
        return h


def test_registration_order_and_dotted_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale", "fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "blocks.0.weight", "blocks.0.bias",
        "blocks.1.0.weight", "blocks.1.0.bias"]
    assert [n for n, _ in net.named_modules()] == ["", "fc1", "act", "bn", "blocks", "blocks.0", "blocks.1",
                                                   "blocks.1.0", "blocks.1.1"]
    assert [n for n, _ in net.named_buffers()] == ["bn.running_mean", "bn.running_var"]
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "bn", "blocks"]
    assert list(net.children()) == [m for _, m in net.named_children()]
    assert net.num_parameters() == 5 + 20 + 5 + 5 + 5 + 25 + 5 + 15 + 3
    assert list(net.parameters())[1] is net.fc1.weight
    # re-assignment replaces; deletion unregisters; None unregisters
    net.act = nn.GELU()
    assert isinstance(dict(net.named_modules())["act"], nn.GELU)
    del net.act
    assert "act" not in dict(net.named_modules())
    lin = nn.Linear(2, 2, bias=False)
    assert [n for n, _ in lin.named_parameters()] == ["weight"] and lin.bias is None


def test_shared_parameters_and_modules_are_listed_once():
    m = nn.Module()
    lin = nn.Linear(3, 3)
    m.a, m.b = lin, lin
    m.w = lin.weight
    assert [n for n, _ in m.named_parameters()] == ["w", "a.bias"]
    assert [n for n, _ in m.named_modules()] == ["", "a"]


def test_module_needs_init_and_parameter_needs_float():
    class Bad(nn.Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(AttributeError, match="Module.__init__"):
        Bad()
    with pytest.raises(TypeError, match="floating"):
        nn.Parameter(np.arange(3))
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(1)


def test_state_dict_roundtrip_and_errors():
    a, b = Net(), Net()
    a.bn.running_mean[...] = 0.5
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()] + ["bn.running_mean", "bn.running_var"]
    assert sd["fc1.weight"] is a.fc1.weight.data  # the arrays themselves
    b.load_state_dict(sd)
    for n, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[n])
        assert v is not sd[n]  # copied in place, not aliased
    w_id = id(b.fc1.weight.data)
    b.load_state_dict({n: v.astype(np.float64) for n, v in sd.items()})
    assert id(b.fc1.weight.data) == w_id and b.fc1.weight.data.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    with pytest.raises(KeyError, match=r"missing keys \['fc1.bias'\]"):
        b.load_state_dict({n: v for n, v in sd.items() if n != "fc1.bias"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        b.load_state_dict({**sd, "extra": np.zeros(1)})
    b.load_state_dict({"fc1.bias": np.full(5, 2.0), "extra": np.zeros(1)}, strict=False)
    assert np.all(b.fc1.bias.data == 2)
    before = {n: v.copy() for n, v in b.state_dict().items()}
    bad = {n: v.copy() for n, v in sd.items()}
    bad["blocks.0.weight"] = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"blocks.0.weight has shape \(5, 4\), expected \(5, 5\)"):
        b.load_state_dict(bad)
    for n, v in b.state_dict().items():  # nothing was changed by the failed load
        np.testing.assert_array_equal(v, before[n])


def test_buffer_reassignment_stays_a_buffer():
    bn = nn.BatchNorm2d(3)
    bn.running_mean = np.full(3, 7.0, np.float32)
    assert "running_mean" in dict(bn.named_buffers()) and bn.state_dict()["running_mean"][0] == 7


def test_train_eval_propagation():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.blocks.train(False)
    assert net.training and not net.blocks[1][0].training


def test_substitute_and_functional_call():
    net = Net().astype(F64).eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4))
    P = params_of(net)
    y0 = net(x)
    P2 = {n: v * 2 for n, v in P.items()}
    y2 = functional_call(net, P2, x)
    ref = Net().astype(F64).eval()
    ref.load_state_dict({**P2, "bn.running_mean": net.bn.running_mean, "bn.running_var": net.bn.running_var})
    np.testing.assert_allclose(y2, ref(x))
    np.testing.assert_array_equal(net(x), y0)  # parameters read normally again
    for n, p in net.named_parameters():
        np.testing.assert_array_equal(p.data, P[n]) and p._sub is None
    # restored after an exception, and nested substitutions restore the outer one
    with pytest.raises(RuntimeError):
        with net.substitute({"fc1.weight": P2["fc1.weight"]}):
            raise RuntimeError
    assert net.fc1.weight._sub is None
    with net.substitute({"fc1.weight": P2["fc1.weight"]}):
        with net.substitute({"fc1.weight": P["fc1.weight"] * 3}):
            assert np.allclose(net.fc1.weight._value(), P["fc1.weight"] * 3)
        assert np.allclose(net.fc1.weight._value(), P2["fc1.weight"])
    with pytest.raises(KeyError, match="unknown parameter names"):
        with net.substitute({"nope": 1}):
            pass
    # a DualTensor parameter gives the directional derivative w.r.t. that parameter only
    t = rng.standard_normal((2, 5))
    out = functional_call(net, {"scale": DualTensor(P["scale"], t)}, x)
    assert type(out) is DualTensor and out.k == 2
    # a Traced parameter records the tape
    out = functional_call(net, {"scale": Traced(P["scale"])}, x)
    assert type(out) is Traced


def test_to_astype_zero_grad_repr():
    net = Net()
    for p in net.parameters():
        p.grad = np.ones_like(p.data)
    assert net.to("cpu") is net
    assert all(type(p.data) is np.ndarray for p in net.parameters())
    if not dt.gpu_available():
        with pytest.raises(RuntimeError, match="cupy"):
            nn.Linear(2, 2).to("gpu")
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")
    net.astype(F64)
    assert all(p.data.dtype == F64 and p.grad.dtype == F64 for p in net.parameters())
    assert all(b.dtype == F64 for _, b in net.named_buffers())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    r = repr(net)
    assert r.startswith("Net(\n  (fc1): Linear(in_features=4, out_features=5, bias=True)")
    assert "(blocks): ModuleList(\n    (0): Linear(in_features=5, out_features=5, bias=True)" in r
    assert "(1): Sequential(\n      (0): Linear(in_features=5, out_features=3, bias=True)\n      (1): Identity()" in r
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Parameter(np.zeros((2, 3), np.float32))) == "Parameter(shape=(2, 3), dtype=float32)"
    assert "BatchNorm2d(4, eps=1e-05, momentum=0.1)" == repr(nn.BatchNorm2d(4))


def test_sequential_and_modulelist_containers():
    s = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(s) == 3 and isinstance(s[1], nn.ReLU) and isinstance(s[-1], nn.Linear)
    head = s[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is s[0]
    s.append(nn.Identity())
    assert [n for n, _ in s.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(s) == [s[0], s[1], s[2], s[3]]
    ml = nn.ModuleList([nn.Linear(2, 2)]).append(nn.Linear(2, 3))
    assert len(ml) == 2 and [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


# --------------------------------------------------------------------- default initialisation

def test_default_init_statistics():
    nn.init.manual_seed(0)
    lin = nn.Linear(400, 300)
    b = 1 / math.sqrt(400)
    for a in (lin.weight.data, lin.bias.data):
        assert a.dtype == np.float32 and np.abs(a).max() <= b and np.abs(a).max() > 0.95 * b
    assert abs(lin.weight.data.std() - b / math.sqrt(3)) < 0.02 * b and abs(lin.weight.data.mean()) < 0.01 * b
    conv = nn.Conv2d(16, 32, 3)
    b = 1 / math.sqrt(16 * 9)
    assert conv.weight.data.shape == (32, 16, 3, 3) and conv.bias.data.shape == (32,)
    assert np.abs(conv.weight.data).max() <= b and abs(conv.weight.data.std() - b / math.sqrt(3)) < 0.03 * b
    assert np.abs(conv.bias.data).max() <= b
    g = nn.Conv2d(4, 8, (3, 1), groups=2)
    assert g.weight.data.shape == (8, 2, 3, 1) and np.abs(g.weight.data).max() <= 1 / math.sqrt(6)
    mha = nn.MultiheadAttention(64, 4)
    bound = math.sqrt(6 / (64 + 192))
    assert mha.in_proj_weight.data.shape == (192, 64) and np.abs(mha.in_proj_weight.data).max() <= bound
    assert abs(mha.in_proj_weight.data.std() - bound / math.sqrt(3)) < 0.03 * bound
    assert np.all(mha.in_proj_bias.data == 0) and np.all(mha.out_proj.bias.data == 0)
    assert np.abs(mha.out_proj.weight.data).max() <= 1 / 8
    bn, ln = nn.BatchNorm2d(5), nn.LayerNorm((2, 3))
    assert np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1)
    assert ln.weight.data.shape == (2, 3) and np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
    # seeded: the same seed gives the same weights
    nn.init.manual_seed(3)
    w1 = nn.Linear(5, 5).weight.data
    nn.init.manual_seed(3)
    np.testing.assert_array_equal(w1, nn.Linear(5, 5).weight.data)
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 3)


def test_default_dtype_float64():
    dt.set_default_dtype(F64)
    try:
        assert nn.Linear(2, 2).weight.data.dtype == F64 and nn.LayerNorm(3).weight.data.dtype == F64
    finally:
        dt.set_default_dtype(np.float32)


# ------------------------------------------------------------------------------ layers, 3 modes

def test_linear_modes():
    rng = np.random.default_rng(0)
    m = nn.Linear(4, 3).astype(F64)
    x = x64(rng, 2, 4)
    plain, _ = check_modes(m, [x])
    np.testing.assert_allclose(plain, x @ m.weight.data.T + m.bias.data)
    check_modes(nn.Linear(4, 3, bias=False).astype(F64), [x64(rng, 2, 5, 4)])


def _conv_ref(x, w, b, stride, pad, groups=1):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = x[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return out + (0 if b is None else b[None, :, None, None])


def test_conv2d_modes():
    rng = np.random.default_rng(1)
    m = nn.Conv2d(2, 3, 3, stride=2, padding=1).astype(F64)
    x = x64(rng, 2, 2, 5, 5)
    plain, _ = check_modes(m, [x])
    np.testing.assert_allclose(plain, _conv_ref(x, m.weight.data, m.bias.data, 2, 1), rtol=1e-10)
    g = nn.Conv2d(4, 2, 2, groups=2, bias=False).astype(F64)
    x = x64(rng, 1, 4, 3, 3)
    plain, _ = check_modes(g, [x])
    np.testing.assert_allclose(plain, _conv_ref(x, g.weight.data, None, 1, 0, groups=2), rtol=1e-10)


def test_batchnorm_modes_and_running_stats():
    rng = np.random.default_rng(2)
    m = nn.BatchNorm2d(3).astype(F64)
    m.weight.data[...] = rng.standard_normal(3)
    m.bias.data[...] = rng.standard_normal(3)
    x = x64(rng, 4, 3, 2, 2) * 2 + 1
    # train mode: batch statistics; running stats updated exactly once per call, whatever k is
    out = m(DualTensor(x, rng.standard_normal((5, *x.shape))))
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    ref = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    ref = ref * m.weight.data[None, :, None, None] + m.bias.data[None, :, None, None]
    np.testing.assert_allclose(out.primal, ref, rtol=1e-10)
    np.testing.assert_allclose(m.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(m.running_var, 0.9 + 0.1 * var * 16 / 15, rtol=1e-12)
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    m(x)  # plain arrays: one more update
    np.testing.assert_allclose(m.running_mean, 0.9 * rm + 0.1 * mean, rtol=1e-12)
    dt.value_and_grad(lambda x: m(x).sum())(x)  # reverse mode: one more
    np.testing.assert_allclose(m.running_mean, 0.81 * rm + 0.19 * mean, rtol=1e-12)
    check_modes(m, [x])
    # eval mode: running statistics are used and not changed
    m.eval()
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    plain, _ = check_modes(m, [x])
    ref = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    ref = ref * m.weight.data[None, :, None, None] + m.bias.data[None, :, None, None]
    np.testing.assert_allclose(plain, ref, rtol=1e-10)
    np.testing.assert_array_equal(m.running_mean, rm)
    np.testing.assert_array_equal(m.running_var, rv)
    # 1d variant on (N, C)
    b1 = nn.BatchNorm1d(3).astype(F64)
    check_modes(b1, [x64(rng, 5, 3)])
    # no running statistics: batch statistics in eval too
    nt = nn.BatchNorm2d(3, track_running_stats=False, affine=False).astype(F64).eval()
    np.testing.assert_allclose(nt(x), (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5),
                               rtol=1e-10)
    assert list(nt.named_parameters()) == [] and list(nt.named_buffers()) == []


def test_layernorm_modes():
    rng = np.random.default_rng(3)
    m = nn.LayerNorm(4).astype(F64)
    m.weight.data[...] = rng.standard_normal(4)
    m.bias.data[...] = rng.standard_normal(4)
    x = x64(rng, 2, 3, 4)
    plain, _ = check_modes(m, [x])
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * m.weight.data + m.bias.data
    np.testing.assert_allclose(plain, ref, rtol=1e-10)
    m2 = nn.LayerNorm((3, 4), elementwise_affine=False).astype(F64)
    plain, _ = check_modes(m2, [x])
    mu, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(plain, (x - mu) / np.sqrt(var + 1e-5), rtol=1e-10)


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _mha_ref(m, q, k, v, mask=None):
    """torch.nn.MultiheadAttention's math (batch_first) in plain NumPy."""
    e, h = m.embed_dim, m.num_heads
    d = e // h
    W, b = m.in_proj_weight.data, m.in_proj_bias.data
    Q, K, V = q @ W[:e].T + b[:e], k @ W[e:2 * e].T + b[e:2 * e], v @ W[2 * e:].T + b[2 * e:]
    sp = lambda t: t.reshape(t.shape[0], t.shape[1], h, d).transpose(0, 2, 1, 3)
    s = sp(Q) @ sp(K).transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        s = np.where(mask, -np.inf, s) if mask.dtype == bool else s + mask
    o = (_softmax(s) @ sp(V)).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], e)
    return o @ m.out_proj.weight.data.T + m.out_proj.bias.data


def test_multihead_attention_modes_vs_torch_math():
    rng = np.random.default_rng(4)
    m = nn.MultiheadAttention(8, 2).astype(F64)
    m.in_proj_bias.data[...] = rng.standard_normal(24) * 0.1
    m.out_proj.bias.data[...] = rng.standard_normal(8) * 0.1
    x = x64(rng, 2, 5, 8)

    class Self(nn.Module):  # self-attention: one input used as query, key and value
        def __init__(self):
            super().__init__()
            self.mha = m

        def forward(self, x):
            return self.mha(x, x, x)[0]

    plain, _ = check_modes(Self(), [x])
    np.testing.assert_allclose(plain, _mha_ref(m, x, x, x), rtol=1e-10)
    out, w = m(x, x, x)
    assert w is None and out.shape == (2, 5, 8)
    # cross-attention with different key/value length, through the separate-projection path
    q, kv = x64(rng, 2, 3, 8), x64(rng, 2, 6, 8)
    plain, _ = check_modes(m, [q, kv, kv * 0.5])
    np.testing.assert_allclose(plain, _mha_ref(m, q, kv, kv * 0.5), rtol=1e-10)
    # masks with torch's meaning: boolean True = not allowed; float = added; (B*heads, L, S) layout
    bmask = np.triu(np.ones((5, 5), bool), 1)
    np.testing.assert_allclose(m(x, x, x, attn_mask=bmask)[0], _mha_ref(m, x, x, x, bmask), rtol=1e-10)
    np.testing.assert_allclose(m(x, x, x, is_causal=True)[0], _mha_ref(m, x, x, x, bmask), rtol=1e-10)
    fmask = rng.standard_normal((4, 5, 5))
    np.testing.assert_allclose(m(x, x, x, attn_mask=fmask)[0], _mha_ref(m, x, x, x, fmask.reshape(2, 2, 5, 5)),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="batch, seq, embed"):
        m(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="need_weights"):
        m(x, x, x, need_weights=True)


def test_activations_pooling_shape_layers_modes():
    rng = np.random.default_rng(5)
    x = x64(rng, 2, 3, 6, 6)
    plain, _ = check_modes(nn.ReLU(), [x])
    np.testing.assert_array_equal(plain, np.maximum(x, 0))
    from scipy.special import erf
    plain, _ = check_modes(nn.GELU(), [x])
    np.testing.assert_allclose(plain, 0.5 * x * (1 + erf(x / math.sqrt(2))), rtol=1e-12)
    plain, _ = check_modes(nn.GELU(approximate="tanh"), [x])
    np.testing.assert_allclose(plain, 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                               rtol=1e-12)
    plain, _ = check_modes(nn.MaxPool2d(2), [x])
    np.testing.assert_array_equal(plain, x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
    plain, _ = check_modes(nn.MaxPool2d(3, 2, 1), [x])
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ref = np.stack([np.stack([xp_[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3)) for j in range(3)], -1)
                    for i in range(3)], -2)
    np.testing.assert_array_equal(plain, ref)
    plain, _ = check_modes(nn.AvgPool2d(2), [x])
    np.testing.assert_allclose(plain, x.reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-12)
    plain, _ = check_modes(nn.AvgPool2d(3, 3), [x])
    np.testing.assert_allclose(plain, x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(3, 5)), rtol=1e-12)
    plain, _ = check_modes(nn.AdaptiveAvgPool2d(1), [x])
    np.testing.assert_allclose(plain, x.mean(axis=(2, 3), keepdims=True), rtol=1e-12)
    plain, _ = check_modes(nn.AdaptiveAvgPool2d((2, 3)), [x])
    np.testing.assert_allclose(plain, x.reshape(2, 3, 2, 3, 3, 2).mean(axis=(3, 5)), rtol=1e-12)
    plain, _ = check_modes(nn.Flatten(), [x])
    assert plain.shape == (2, 108)
    np.testing.assert_array_equal(plain, x.reshape(2, -1))
    assert nn.Flatten(2)(x).shape == (2, 3, 36) and nn.Flatten(0, 1)(x).shape == (6, 6, 6)
    plain, _ = check_modes(nn.Identity(), [x])
    np.testing.assert_array_equal(plain, x)
    d = DualTensor(x, rng.standard_normal((2, *x.shape)))
    assert nn.Identity()(d) is d


def test_sequential_and_modulelist_modes():
    rng = np.random.default_rng(6)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 3), nn.GELU()).astype(F64).eval()
    seq[1].running_mean[...] = rng.standard_normal(2) * 0.1
    check_modes(seq, [x64(rng, 2, 1, 4, 4)])

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2)])

        def forward(self, x):
            for layer in self.layers:
                x = dt.tanh(layer(x))
            return x

    check_modes(Stack().astype(F64), [x64(rng, 4, 3)])


def test_dropout_layer():
    rng = np.random.default_rng(7)
    x = np.abs(x64(rng, 50, 40)) + 0.1
    m = nn.Dropout(0.3, seed=0)
    assert m.eval()(x) is x  # identity in eval mode
    m.train()
    t = rng.standard_normal((3, *x.shape))
    out = m(DualTensor(x, t))
    keep = out.primal != 0
    assert 0.6 < keep.mean() < 0.8
    np.testing.assert_allclose(out.primal, x * keep / 0.7, rtol=1e-12)
    np.testing.assert_allclose(out.tangent, t * keep / 0.7, rtol=1e-12)  # one mask for primal and all tangents
    # seeded: the same seed gives the same masks; successive calls differ
    a, b = nn.Dropout(0.5, seed=1), nn.Dropout(0.5, seed=1)
    m1 = a(x) != 0
    np.testing.assert_array_equal(m1, b(x) != 0)
    assert (a(x) != 0).tolist() != m1.tolist()
    # reverse mode: the gradient is the mask
    st = a.rng.bit_generator.state
    val, g = dt.value_and_grad(lambda x: a(x).sum())(x)
    a.rng.bit_generator.state = st
    np.testing.assert_allclose(g, (a(x) != 0) / 0.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        nn.Dropout(1.5)


def test_float32_is_preserved():
    rng = np.random.default_rng(8)
    seq = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.LayerNorm(4), nn.Linear(4, 2))
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    assert seq(x).dtype == np.float32
    out = seq(DualTensor(x, rng.standard_normal((3, *x.shape)).astype(np.float32)))
    assert out.primal.dtype == np.float32 and out.tangent.dtype == np.float32
    assert all(b.dtype == np.float32 for _, b in seq.named_buffers())
    mha = nn.MultiheadAttention(4, 2)
    y = rng.standard_normal((1, 3, 4)).astype(np.float32)
    assert mha(y, y, y)[0].dtype == np.float32


def test_pool_layer_options():
    rng = np.random.default_rng(9)
    x = x64(rng, 1, 2, 5, 5)
    plain, _ = check_modes(nn.MaxPool2d(2, ceil_mode=True), [x])
    xp_ = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
    np.testing.assert_array_equal(plain, xp_.reshape(1, 2, 3, 2, 3, 2).max(axis=(3, 5)))
    plain, _ = check_modes(nn.MaxPool2d(2, stride=1, dilation=2), [x])
    ref = np.maximum.reduce([x[:, :, i:i + 3, j:j + 3] for i in (0, 2) for j in (0, 2)])
    np.testing.assert_array_equal(plain, ref)
    for include in (True, False):
        plain, _ = check_modes(nn.AvgPool2d(3, 2, 1, count_include_pad=include), [x])
        xz = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        ones = np.pad(np.ones_like(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
        win = lambda a: np.stack([np.stack([a[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(axis=(2, 3))
                                            for j in range(3)], -1) for i in range(3)], -2)
        np.testing.assert_allclose(plain, win(xz) / (9 if include else win(ones)), rtol=1e-12)
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=None, padding=0)"
    assert repr(nn.MultiheadAttention(4, 2)).startswith("MultiheadAttention(embed_dim=4, num_heads=2")


def test_heap_arrays_keeps_numpy_working():
    import platform
    import sys

    from dualtensor.allocator import heap_arrays

    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert heap_arrays() is glibc  # on: process-wide (train() turns it on as well)
    for _ in range(3):  # 40 MB blocks, over glibc's mmap threshold: now reused from the heap
        a = np.full(10_000_000, 2.0, np.float32)
        assert float(a.sum()) == 2e7
        del a
