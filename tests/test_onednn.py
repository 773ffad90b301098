"""conv2d through oneDNN (the ``onednn`` extra): float32 primal, tangents and VJPs equal the GEMM layouts'
(which tests/test_ops_conv.py checks against loop references and finite differences), for every geometry
conv2d takes; the path is really taken; models train the same; it can be turned off."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dualtensor as dt
from dualtensor import onednn
from dualtensor.ops import conv as conv_mod
from opcheck import noncontig
from test_ops_conv import conv_configs, saved_aux

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason="oneDNN not installed (pip install -e '.[onednn]')")


def _f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _run(direct, f, args, tangents, cot):
    """(primal, tangent, VJPs) of f at float32 args with the direct library on or off, and whether it ran."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_mod, "_USE_DIRECT", direct)
        saved = saved_aux(mp, conv_mod._Direct)
        y = f(*[dt.DualTensor(a, t) if t is not None else a for a, t in zip(args, tangents)])
        out, vjp_fn = dt.vjp(f, *args)
        grads = vjp_fn(cot(out))
    return np.asarray(y.primal), np.asarray(y.tangent), [np.asarray(g) for g in grads], saved


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def _compare(f, args, tangents, seed=0, tol=2e-5, direct=True):
    """The rules with oneDNN equal the GEMM layouts'; with ``direct``, oneDNN ran every convolution (where it
    has only its reference loops for a geometry, conv2d keeps the GEMMs)."""
    rng = np.random.default_rng(seed)
    cots = {}

    def cot(out):
        if "g" not in cots:
            cots["g"] = _f32(rng, out.shape)
        return cots["g"]

    got = _run(True, f, args, tangents, cot)
    want = _run(False, f, args, tangents, cot)
    assert got[3] and not any(want[3])
    if direct:
        assert all(got[3])
    _close(got[0], want[0], tol)
    _close(got[1], want[1], tol)
    for g, h in zip(got[2], want[2]):
        _close(g, h, tol)
    return got


@settings(deadline=None, max_examples=50)
@given(cfg=conv_configs(), seed=st.integers(0, 2 ** 16), preferred=st.booleans())
def test_direct_equals_gemm_layouts(cfg, seed, preferred):
    rng = np.random.default_rng(seed)
    k = 3
    x, w = _f32(rng, cfg["xshape"]), _f32(rng, cfg["wshape"])
    b = _f32(rng, (cfg["wshape"][0],)) if cfg["bias"] else None
    if not cfg["contiguous"]:  # strided views: read in place where oneDNN can, else copied first
        x, w = noncontig(x), noncontig(w)
    elif preferred:  # the weights as nn.Conv2d keeps them: (kh, kw, C, O) memory where that pays
        w = onednn.preferred_weights(w, cfg["groups"])
    opts = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    diff = [i for i in cfg["diff"] if i < 2 or b is not None]
    tangents = [_f32(rng, (k,) + a.shape) if a is not None and i in diff else None for i, a in enumerate((x, w, b))]
    if all(t is None for t in tangents):
        tangents[0] = _f32(rng, (k,) + x.shape)
    args = (x, w) if b is None else (x, w, b)
    _compare(lambda *a: dt.conv2d(*a, **opts), args, tangents[:len(args)], seed, direct=False)


@pytest.mark.parametrize("layout", ["nchw", "channels-last", "strided", "batchless"])
@pytest.mark.parametrize("xshape, stride", [((4, 6, 8, 8), 2), ((3, 5, 7, 9), 2), ((2, 4, 7, 7), 3)])
def test_strided_shortcut_weight_cotangent(layout, xshape, stride):
    """The 1x1 strided shortcut convolutions, whose weight cotangent oneDNN's kernel is declined for, give the
    GEMM layouts' rules (the weight cotangent as one product of g and the strided input; odd sizes crop)."""
    rng = np.random.default_rng(7)
    x, w, b = _f32(rng, xshape), _f32(rng, (10, xshape[1], 1, 1)), _f32(rng, (10,))
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "strided":
        x = noncontig(x)
    elif layout == "batchless":
        x = x[0]
    tangents = [_f32(rng, (3,) + x.shape), _f32(rng, (3,) + w.shape), None]
    taken = []
    real = conv_mod._pointwise_vjp_w
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_mod, "_pointwise_vjp_w", lambda *a: taken.append(1) or real(*a))
        _compare(lambda *a: dt.conv2d(*a, stride=stride), (x, w, b), tangents)
    assert taken == [1]  # the oneDNN run's weight cotangent came from the one product, not from oneDNN


@pytest.mark.parametrize("layout", ["nchw", "channels-last", "batchless"])
def test_direct_layouts_and_chains(layout):
    """Channels-last inputs (a convolution's own results) are read in place; the input cotangent comes back
    in its primal's layout; a chain of convolutions, pooling and ReLU matches the GEMM layouts."""
    rng = np.random.default_rng(1)
    x = _f32(rng, (4, 8, 12, 12))
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "batchless":
        x = x[0]
    w1, w2, b2 = _f32(rng, (16, 8, 3, 3), 0.2), _f32(rng, (8, 16, 3, 3), 0.2), _f32(rng, (8,))

    def f(x, w1, w2, b2):
        h = dt.relu(dt.conv2d(x, w1, padding=1))
        h = dt.max_pool2d(h, 2)
        return dt.conv2d(h, w2, b2, stride=2, padding=1)

    tangents = [_f32(rng, (2,) + a.shape) for a in (x, w1, w2, b2)]
    got = _compare(f, (x, w1, w2, b2), tangents)
    y = dt.conv2d(x, w1, padding=1)
    assert np.asarray(y).strides[-3] == np.asarray(y).itemsize  # channels-last result
    _, vjp_fn = dt.vjp(lambda x: dt.conv2d(x, w1, padding=1), x)
    gx = vjp_fn(np.ones(y.shape, np.float32))[0]
    assert gx.flags.c_contiguous == x.flags.c_contiguous
    assert got[0].shape == (8, 3, 3) if layout == "batchless" else got[0].shape == (4, 8, 3, 3)


def test_direct_models_train_alike():
    """A CNN's backprop and activity-perturbation gradients with oneDNN equal the GEMM layouts' (float32)."""
    from dualtensor.fgrad import activity_gradient
    from dualtensor.nn import functional as F
    from dualtensor.nn.models.blocked import Blocked

    rng = np.random.default_rng(2)
    dt.nn.init.manual_seed(0)
    model = Blocked([dt.nn.Sequential(dt.nn.Conv2d(3, 8, 3, 1, 1), dt.nn.ReLU(), dt.nn.MaxPool2d(2)),
                     dt.nn.Sequential(dt.nn.Conv2d(8, 8, 3, 1, 1), dt.nn.ReLU()),
                     dt.nn.Sequential(dt.nn.Flatten(), dt.nn.Linear(8 * 8 * 8, 10))])
    for p in model.parameters():
        p.data = p.data.astype(np.float32)
    x, y = _f32(rng, (6, 3, 16, 16)), rng.integers(0, 10, 6)
    per_sample = lambda logits, y: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    res = {}
    for direct in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(conv_mod, "_USE_DIRECT", direct)
            a = activity_gradient(model, per_sample, x, y, k=4, rng=3)
            names = [n for n, _ in model.named_parameters()]
            params = [p.data for _, p in model.named_parameters()]
            loss, vjp_fn = dt.vjp(lambda *ps: F.cross_entropy(dt.nn.functional_call(model, dict(zip(names, ps)), x),
                                                              y), *params)
            res[direct] = (a.d, a.grads, vjp_fn(np.float32(1.0)))
    _close(res[True][0], res[False][0], 1e-4)
    for n in res[True][1]:
        _close(res[True][1][n], res[False][1][n], 1e-4)
    for g, h in zip(res[True][2], res[False][2]):
        _close(g, h, 1e-4)


@st.composite
def hwio_configs(draw):
    """Geometries whose weights preferred_weights lays out as (kh, kw, C, O): one group, at least two input and
    output channels and kernel taps, inputs no smaller than the dilated kernel (a kernel cropped to one tap
    becomes a 1x1 convolution, which oneDNN runs as a GEMM for these weights: the last parametrized case
    of test_preferred_weights_are_read_in_place covers the cropping)."""
    c, o = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    kh, kw = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    stride, dil, pad = (draw(st.integers(1, 2)) for _ in range(3))
    h = draw(st.integers(dil * (max(kh, kw) - 1) + 1, 9))
    return dict(xshape=(draw(st.integers(1, 3)), c, h, h), wshape=(o, c, kh, kw), stride=stride, dilation=dil,
                padding=pad, bias=draw(st.booleans()))


@settings(deadline=None, max_examples=40)
@given(cfg=hwio_configs(), seed=st.integers(0, 2 ** 16))
def test_preferred_weights_equal_gemm_layouts(cfg, seed):
    rng = np.random.default_rng(seed)
    x, w = _f32(rng, cfg["xshape"]), onednn.preferred_weights(_f32(rng, cfg["wshape"]))
    args = (x, w) + ((_f32(rng, (cfg["wshape"][0],)),) if cfg["bias"] else ())
    tangents = [_f32(rng, (3,) + a.shape) for a in args]
    opts = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"])
    in_place, orig = [], onednn._forward

    def forward(*a, **kw):  # which forward convolutions read the weights in place
        hit = orig(*a, **kw)
        in_place.append(kw.get("hwio") is not None and hit is not None)
        return hit

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onednn, "_forward", forward)
        _compare(lambda *a: dt.conv2d(*a, **opts), args, tangents, seed, direct=False)
    assert any(in_place) == onednn.reads_plain_weights()  # AVX-512 brgemm kernels; with AVX2 a reorder


@pytest.mark.parametrize("xshape, wshape, stride, pad", [
    ((4, 8, 12, 12), (16, 8, 3, 3), 1, 1), ((2, 3, 16, 16), (8, 3, 7, 7), 2, 3),
    ((4, 8, 1, 1), (16, 8, 3, 3), 1, 1)])  # the last one's kernel is cropped to its centre (a strided view)
def test_preferred_weights_are_read_in_place(monkeypatch, xshape, wshape, stride, pad):
    """Weights in (kh, kw, C, O) memory reach oneDNN's forward without a reorder where it has a direct kernel
    for them (else both layouts are reordered) and give the same convolution (primal and input tangent) as
    C-contiguous ones, which are reordered on every call."""
    rng = np.random.default_rng(4)
    x, w, tx = _f32(rng, xshape), _f32(rng, wshape), _f32(rng, (2,) + xshape)
    wp = onednn.preferred_weights(w)
    assert not wp.flags.c_contiguous and np.array_equal(wp, w) and onednn.preferred_weights(wp) is wp
    reorders, orig = [], onednn._weights_in
    monkeypatch.setattr(onednn, "_weights_in", lambda *a: reorders.append(a[1].shape) or orig(*a))
    got = dt.conv2d(dt.DualTensor(x, tx), wp, stride=stride, padding=pad)
    in_place = onednn.reads_plain_weights()
    assert len(reorders) == (0 if in_place else 2)  # primal and tangent convolutions
    want = dt.conv2d(dt.DualTensor(x, tx), w, stride=stride, padding=pad)
    assert len(reorders) == (2 if in_place else 4)
    _close(np.asarray(got.primal), np.asarray(want.primal))
    _close(np.asarray(got.tangent), np.asarray(want.tangent))


def test_conv2d_layers_keep_preferred_weights():
    """nn.Conv2d stores float32 weights as preferred_weights lays them out (same values as C-contiguous ones
    drawn from the same seed), keeps that layout through load_state_dict and casts, and C-contiguous weights
    where oneDNN has no use for the layout (1x1 kernels, groups, float64)."""
    def build(*args, **kw):
        dt.nn.init.manual_seed(5)
        return dt.nn.Conv2d(*args, **kw).astype(np.float32)

    c = build(8, 16, 3)
    w = c.weight.data
    assert not w.flags.c_contiguous and onednn.preferred_weights(w) is w
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onednn, "preferred_weights", lambda w, groups=1: np.ascontiguousarray(w))
        assert np.array_equal(build(8, 16, 3).weight.data, w)
    c.load_state_dict({"weight": np.ones((16, 8, 3, 3), np.float32), "bias": np.zeros(16, np.float32)})
    assert c.weight.data is w and (w == 1).all()
    assert c.astype(np.float64).weight.data.flags.c_contiguous
    assert onednn.preferred_weights(c.astype(np.float32).weight.data) is c.weight.data
    for args, kw in (((8, 16, 1), {}), ((8, 16, 3), {"groups": 2}), ((1, 16, 3), {})):
        assert build(*args, **kw).weight.data.flags.c_contiguous


def test_float64_and_switch_off():
    """float64 stays on the GEMM layouts; DUALTENSOR_ONEDNN=0 leaves the library unloaded."""
    x, w = np.ones((1, 8, 5, 5)), np.ones((4, 8, 3, 3))
    ans = conv_mod._conv2d_impl(x, w, None, stride=(1, 1), pads=((1, 1), (1, 1)), dilation=(1, 1), groups=1)
    assert not isinstance(ans[1], conv_mod._Direct)
    code = "from dualtensor import onednn; print(onednn.available(), onednn.version())"
    env = dict(os.environ, DUALTENSOR_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "None"]
    assert onednn.version().startswith("3.")


def test_evicted_primitives_are_destroyed_and_rebuilt_the_same(monkeypatch):
    """Beyond the cache's size the least recently used primitives are destroyed with their descriptors, and a
    call that needs one again rebuilds it: the same results, bit for bit, as the first build's."""
    lib = onednn._load()
    monkeypatch.setattr(onednn, "_CACHE_SIZE", 3)
    destroyed = {"dnnl_primitive_destroy": 0, "dnnl_primitive_desc_destroy": 0}
    for name in destroyed:
        def spy(h, name=name, orig=getattr(lib.lib, name)):
            destroyed[name] += 1
            return orig(h)
        monkeypatch.setattr(lib.lib, name, spy)
    rng = np.random.default_rng(0)
    geo = ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    cases = [(_f32(rng, (2, c, 6, 6)), _f32(rng, (c + 1, c, 3, 3))) for c in (2, 3, 4, 5)]
    mats = [(_f32(rng, (64, 256)), _f32(rng, (256, 128 + 8 * i))) for i in range(3)]

    def results():
        out = []
        for x, w in cases:
            y = onednn.conv_forward(x, w, None, *geo)
            out += [y, onednn.conv_backward_data(y, w, x.shape, *geo),
                    onednn.conv_backward_weights(y, x, w.shape, *geo)]
        if onednn._has_brgemm_matmul(lib):
            out += [onednn.matmul(a, b) for a, b in mats]
        return [np.array(o) for o in out]

    first = results()
    assert len(lib.cache) <= 3
    assert destroyed["dnnl_primitive_destroy"] > 0 and destroyed["dnnl_primitive_desc_destroy"] > 0
    again = results()  # every entry was evicted in between: all rebuilt
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for (x, w), y in zip(cases, first[0::3]):  # and right: against the GEMM layouts in float64
        want = conv_mod._conv2d_impl(x.astype(np.float64), w.astype(np.float64), None, stride=(1, 1),
                                     pads=((1, 1), (1, 1)), dilation=(1, 1), groups=1)[0]
        _close(y, want)


_HEAP_SCRIPT = r"""
import os
import numpy as np
from dualtensor import onednn
if os.environ.get("HEAP_SCRIPT_CACHE"):  # a small cache: primitives destroyed and rebuilt all the time
    onednn._CACHE_SIZE = int(os.environ["HEAP_SCRIPT_CACHE"])
rng = np.random.default_rng(0)
# (x shape, weight shape, stride, padding, groups): ResNet stems, 3x3 stages, 1x1 shortcuts (strided), a grouped layer
for xs, ws, s, p, groups in [((4, 3, 16, 16), (8, 3, 7, 7), 2, 3, 1), ((4, 4, 8, 8), (4, 4, 3, 3), 1, 1, 1),
                             ((4, 4, 8, 8), (8, 4, 3, 3), 2, 1, 1), ((4, 4, 8, 8), (8, 4, 1, 1), 2, 0, 1),
                             ((4, 8, 8, 8), (16, 8, 1, 1), 1, 0, 1), ((2, 8, 6, 6), (8, 2, 3, 3), 1, 1, 4)]:
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    geo = ((s, s), ((p, p), (p, p)), (1, 1), groups)
    for _ in range(15):
        for w in (w, onednn.preferred_weights(w, groups)):  # C-contiguous and as nn.Conv2d keeps them
            y = onednn.conv_forward(x, w, None, *geo)
            if y is not None:
                g = rng.standard_normal(y.shape).astype(np.float32)
                onednn.conv_backward_data(g, w, xs, *geo)
                onednn.conv_backward_weights(g, x, ws, *geo)
print("ok")
"""


def test_no_heap_corruption_on_this_cpu():
    """Every kind of convolution the models use, forward and both backwards, repeated under glibc's heap checks:
    oneDNN 3.2's strided 1x1 weight-gradient kernel corrupted the heap on AVX2 CPUs (right results, a malloc
    abort later), so it is declined; this catches any such kernel on the CPU the tests run on."""
    for cache in ("", "2"):  # (and with entries evicted and destroyed all the time)
        env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165", OMP_NUM_THREADS="1", HEAP_SCRIPT_CACHE=cache)
        r = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0 and r.stdout.strip() == "ok", (cache, r.returncode, r.stderr[-2000:])
