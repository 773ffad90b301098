"""Rules of conv2d: loop references, finite differences, stacking, adjoints, options and errors.

Every layout is covered: the im2col columns batched (B, G, CKK, L) and flat (G, CKK, B*L), forced through
``conv._FLAT_MAX_L`` (0: always batched; huge: always flat), and the shifted GEMMs of stride-1 one-group
convolutions, forced through ``conv._SHIFT_MAX_WASTE`` (0: never; huge: wherever they apply).
"""
import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor import nn
from dualtensor.ops import conv as conv_mod
from opcheck import check_rules, make, noncontig, to_np


def ref_conv2d(x, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    """Direct loop convolution (tiny sizes only); pads = ((top, bottom), (left, right))."""
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp_ = np.zeros((n, c, h + sum(pads[0]), wd + sum(pads[1])))
    xp_[:, :, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd] = x
    ho = (xp_.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp_.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    out = np.zeros((n, o, ho, wo))
    for oc in range(o):
        g = oc // og
        for a in range(ho):
            for bb in range(wo):
                acc = np.zeros(n)
                for ci in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            acc += w[oc, ci, i, j] * xp_[:, g * cg + ci, a * stride[0] + i * dilation[0],
                                                         bb * stride[1] + j * dilation[1]]
                out[:, oc, a, bb] = acc + (0.0 if b is None else b[oc])
    return out[0] if unbatched else out


def sym(p):
    return ((p[0], p[0]), (p[1], p[1]))


IM2COL_LAYOUTS = {"batched": 0, "flat": 10 ** 9}
LAYOUTS = [*IM2COL_LAYOUTS, "shift"]


def _settings(name):
    """The conv module settings forcing the layout ``name``."""
    shift = name == "shift"
    return {"_USE_DIRECT": False, "_FLAT_MAX_L": IM2COL_LAYOUTS.get(name, conv_mod._FLAT_MAX_L),
            "_SHIFT_MAX_WASTE": 10 ** 9 if shift else 0, "_SHIFT_MAX_WASTE_WIDE": 10 ** 9 if shift else 0,
            "_SHIFT_MIN_CHANNELS": 1 if shift else 10 ** 9}


@contextlib.contextmanager
def layout(name):
    """Force the layout (usable inside hypothesis tests, unlike monkeypatch)."""
    new = _settings(name)
    old = {a: getattr(conv_mod, a) for a in new}
    for a, v in new.items():
        setattr(conv_mod, a, v)
    try:
        yield
    finally:
        for a, v in old.items():
            setattr(conv_mod, a, v)


def force_layout(monkeypatch, name):
    for a, v in _settings(name).items():
        monkeypatch.setattr(conv_mod, a, v)


def saved_aux(mp, kind):
    """Spy on conv2d's primal (through the monkeypatch ``mp``): the list it returns gets, per call, whether
    the saved aux was a ``kind`` (conv._Grid: shifted GEMMs; conv._Direct: the direct library)."""
    saved = []
    orig = conv_mod._conv2d_impl

    def spy(*a, **kw):
        ans = orig(*a, **kw)
        saved.append(isinstance(ans[1], kind))
        return ans

    mp.setattr(conv_mod._conv2d, "impl", spy)
    return saved


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.integers(1, 4 // groups)), draw(st.integers(1, 4 // groups))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    # spatial size at least the dilated kernel minus the padding
    h = draw(st.integers(max(3, dil[0] * (kh - 1) + 1 - 2 * pad[0]), 9))
    w = draw(st.integers(max(3, dil[1] * (kw - 1) + 1 - 2 * pad[1]), 9))
    batch = draw(st.sampled_from([(1,), (2,), ()]))
    return dict(xshape=batch + (cg * groups, h, w), wshape=(og * groups, cg, kh, kw), stride=stride, dilation=dil,
                padding=pad, groups=groups, bias=draw(st.booleans()), contiguous=draw(st.booleans()),
                diff=draw(st.sampled_from([(0, 1, 2), (0,), (1,), (0, 2)])),
                layout=draw(st.sampled_from(list(LAYOUTS))))


@given(cfg=conv_configs(), seed=st.integers(0, 2 ** 16))
def test_conv2d_rules(xp, cfg, seed):
    x = make(xp, cfg["xshape"], seed)
    w = make(xp, cfg["wshape"], seed + 1)
    b = make(xp, (cfg["wshape"][0],), seed + 2) if cfg["bias"] else None
    if not cfg["contiguous"]:
        x, w = noncontig(x), noncontig(w)
    opts = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    diff = tuple(i for i in cfg["diff"] if i < 2 or b is not None)

    def f(x, w, b):
        return dt.conv2d(x, w, b, **opts)

    def ref(x, w, b):
        return ref_conv2d(x, w, b, cfg["stride"], sym(cfg["padding"]), cfg["dilation"], cfg["groups"])

    with layout(cfg["layout"]):
        check_rules(f, (x, w, b), diff=diff, ref=ref)


@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((2, 4), (1, 1)), ((2, 3), (2, 1))])
def test_conv2d_same_and_valid_padding(xp, kernel, dilation):
    x, w, b = make(xp, (2, 2, 6, 7), 0), make(xp, (3, 2) + kernel, 1), make(xp, (3,), 2)
    tot = [d * (k - 1) for k, d in zip(kernel, dilation)]
    pads = tuple((t // 2, t - t // 2) for t in tot)  # torch puts the odd extra padding at the end
    out = check_rules(lambda x, w, b: dt.conv2d(x, w, b, padding="same", dilation=dilation), (x, w, b), diff=(0, 1, 2),
                      ref=lambda x, w, b: ref_conv2d(x, w, b, pads=pads, dilation=dilation))
    assert out.shape[-2:] == (6, 7)
    check_rules(lambda x, w: dt.conv2d(x, w, padding="valid", dilation=dilation), (x, w), diff=(0, 1),
                ref=lambda x, w: ref_conv2d(x, w, dilation=dilation))


@pytest.mark.parametrize("lay", list(LAYOUTS))
def test_conv2d_k8_stacked(xp, lay):
    x, w, b = make(xp, (2, 4, 6, 5), 3), make(xp, (4, 2, 3, 2), 4), make(xp, (4,), 5)
    with layout(lay):
        check_rules(lambda x, w, b: dt.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2), (x, w, b),
                    diff=(0, 1, 2), k=8,
                    ref=lambda x, w, b: ref_conv2d(x, w, b, (2, 1), sym((1, 1)), (1, 2), 2))


@pytest.mark.parametrize("lay,small_ckk", [("batched", 0), ("batched", 10 ** 9), ("flat", 0), ("shift", 0)])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_weight_tangent_all_gemm_layouts(xp, monkeypatch, lay, small_ckk, groups):
    monkeypatch.setattr(conv_mod, "_SMALL_CKK", small_ckk)
    force_layout(monkeypatch, lay)
    x, w, b = noncontig(make(xp, (2, 4, 5, 6), 8)), make(xp, (6, 4 // groups, 2, 3), 9), make(xp, (6,), 10)
    ref = lambda x, w, b: ref_conv2d(x, w, b, (1, 2), sym((1, 0)), (2, 1), groups)  # noqa: E731
    f = lambda x, w, b: dt.conv2d(x, w, b, stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=groups)  # noqa: E731
    check_rules(f, (x, w, b), diff=(1,), k=4, ref=ref)
    check_rules(f, (x, w, b), diff=(0, 1, 2), k=4)


@pytest.mark.parametrize("lay", list(LAYOUTS))
def test_conv2d_float32_preserved(xp, monkeypatch, lay):
    force_layout(monkeypatch, lay)
    x = make(xp, (2, 3, 8, 8), 0, dtype=np.float32)
    w = make(xp, (4, 3, 3, 3), 1, dtype=np.float32)
    b = make(xp, (4,), 2, dtype=np.float32)
    rng = np.random.default_rng(0)
    tx = xp.asarray(rng.standard_normal((5, *x.shape)).astype(np.float32))
    tw = xp.asarray(rng.standard_normal((5, *w.shape)).astype(np.float32))
    tb = xp.asarray(rng.standard_normal((5, *b.shape)).astype(np.float32))
    y = dt.conv2d(dt.DualTensor(x, tx), dt.DualTensor(w, tw), dt.DualTensor(b, tb), padding=1)
    assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32
    assert dt.conv2d(x, w, b).dtype == np.float32
    _, vjp_fn = dt.vjp(lambda x, w, b: dt.conv2d(x, w, b, stride=2, padding=1), x, w, b)
    for g in vjp_fn(xp.ones((2, 4, 4, 4), np.float32)):
        assert g.dtype == np.float32
    # float32 result agrees with the float64 computation
    y64 = dt.conv2d(dt.DualTensor(x.astype(np.float64), tx.astype(np.float64)),
                    dt.DualTensor(w.astype(np.float64), tw.astype(np.float64)),
                    dt.DualTensor(b.astype(np.float64), tb.astype(np.float64)), padding=1)
    np.testing.assert_allclose(to_np(y.tangent), to_np(y64.tangent), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lay", list(IM2COL_LAYOUTS))
def test_conv2d_im2col_once_per_call(xp, monkeypatch, lay):
    """The primal columns are built once and reused; input tangents share one more im2col for all k
    (k * B images fit in one _IM2COL_BYTES chunk here; chunking is tested below)."""
    force_layout(monkeypatch, lay)
    calls = []
    orig = conv_mod._im2col
    monkeypatch.setattr(conv_mod, "_im2col", lambda x, *a: calls.append(x.shape) or orig(x, *a))
    x, w = make(xp, (2, 3, 6, 6), 0), make(xp, (4, 3, 3, 3), 1)
    k = 5
    rng = np.random.default_rng(1)
    tx, tw = (xp.asarray(rng.standard_normal((k, *a.shape))) for a in (x, w))
    dt.conv2d(x, dt.DualTensor(w, tw))
    assert calls == [(2, 3, 6, 6)]
    calls.clear()
    dt.conv2d(dt.DualTensor(x, tx), dt.DualTensor(w, tw))
    assert calls == [(2, 3, 6, 6), (k * 2, 3, 6, 6)]


@pytest.mark.parametrize("lay", list(IM2COL_LAYOUTS))
@pytest.mark.parametrize("budget_tangents", [1, 2, 5])
def test_conv2d_input_tangents_im2col_in_chunks(xp, monkeypatch, lay, budget_tangents):
    """Input-tangent columns are built in ceil(k / tangents-per-chunk) im2col calls under _IM2COL_BYTES, same result."""
    force_layout(monkeypatch, lay)
    x, w, b = make(xp, (2, 3, 6, 6), 0), make(xp, (4, 3, 3, 3), 1), make(xp, (4,), 2)
    k = 5
    rng = np.random.default_rng(1)
    tx, tw, tb = (xp.asarray(rng.standard_normal((k, *a.shape))) for a in (x, w, b))
    args = (dt.DualTensor(x, tx), dt.DualTensor(w, tw), dt.DualTensor(b, tb))
    want = dt.conv2d(*args, padding=1)  # default budget: one chunk
    per_tangent = 2 * 3 * 9 * 36 * 8  # B * C*kh*kw * Ho*Wo float64 column entries of one tangent
    monkeypatch.setattr(conv_mod, "_IM2COL_BYTES", budget_tangents * per_tangent + per_tangent // 2)
    calls = []
    orig = conv_mod._im2col
    monkeypatch.setattr(conv_mod, "_im2col", lambda x, *a: calls.append(x.shape[0]) or orig(x, *a))
    y = dt.conv2d(*args, padding=1)
    chunks = [2 * min(budget_tangents, k - s) for s in range(0, k, budget_tangents)]
    assert calls == [2] + chunks and len(chunks) == math.ceil(k / budget_tangents)
    np.testing.assert_allclose(to_np(y.tangent), to_np(want.tangent), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw,padding,flat", [((3, 3), 0, True), ((4, 4), 1, True), ((5, 5), 1, False)])
def test_conv2d_layout_chosen_by_output_size(xp, monkeypatch, hw, padding, flat):
    """Ho*Wo = 1 and 16 (the threshold) use the flat columns, 25 the batched ones, for primal and tangents."""
    seen = []
    orig = conv_mod._im2col
    monkeypatch.setattr(conv_mod, "_im2col", lambda x, *a: seen.append(a[-1]) or orig(x, *a))
    x, w = make(xp, (1, 2) + hw, 0), make(xp, (2, 2, 3, 3), 1)
    check_rules(lambda x, w: dt.conv2d(x, w, padding=padding), (x, w), diff=(0, 1), k=2)
    assert seen and set(seen) == {flat}


@pytest.mark.parametrize("xs,ws,opts,shift", [
    ((2, 8, 28, 28), (4, 8, 3, 3), dict(padding=1), True),     # grid 29*29 / 784 output positions
    ((2, 8, 3, 3), (4, 8, 3, 3), dict(padding=1), True),       # 16 / 9, just under the threshold
    ((2, 8, 2, 2), (4, 8, 3, 3), dict(padding=1), False),      # 9 / 4: too many dropped rows
    ((2, 129, 8, 8), (4, 129, 3, 3), dict(padding=1), True),   # wide: 81 / 64 under the wide threshold
    ((2, 129, 4, 4), (4, 129, 3, 3), dict(padding=1), False),  # wide: 25 / 16 over it
    ((2, 8, 8, 8), (4, 8, 3, 3), dict(padding=3), True),       # gaps of 4 rows and columns: 12*12 / 12*12
    ((2, 7, 28, 28), (4, 7, 3, 3), dict(padding=1), False),    # fewer than _SHIFT_MIN_CHANNELS
    ((2, 8, 28, 28), (4, 8, 3, 3), dict(padding=1, stride=2), False),
    ((2, 8, 28, 28), (4, 4, 3, 3), dict(padding=1, groups=2), False),
    ((2, 8, 28, 28), (4, 8, 1, 1), {}, False),                 # 1x1: the columns are a view already
])
def test_conv2d_shift_chosen_by_waste(xp, xs, ws, opts, shift):
    """The shifted GEMMs run for stride-1 one-group convolutions whose grid (rows and images sharing
    their padding) is at most _SHIFT_MAX_WASTE times the output, for the primal, the tangents and the VJPs alike."""
    x, w = make(xp, xs, 0, dtype=np.float32), make(xp, ws, 1, dtype=np.float32)
    with pytest.MonkeyPatch.context() as mp:
        saved = saved_aux(mp, conv_mod._Grid)
        mp.setattr(conv_mod, "_USE_DIRECT", False)  # the GEMM layouts' choice (not oneDNN's)
        dt.conv2d(x, w, **opts)
    assert saved == [shift]
    with layout("batched"):
        want = dt.conv2d(x, w, **opts)
    want = to_np(want)  # float32 sums of up to 9 * 129 products, in another order
    np.testing.assert_allclose(to_np(dt.conv2d(x, w, **opts)), want, rtol=1e-5, atol=1e-5 * abs(want).max())


@pytest.mark.parametrize("pads,kernel,dilation", [
    (((1, 1), (1, 1)), (3, 3), (1, 1)),
    (((0, 1), (1, 2)), (2, 4), (1, 1)),   # "same" for even kernels: the odd unit at the end
    (((3, 3), (0, 0)), (3, 2), (1, 1)),   # more padding than the kernel reaches: gap rows hold the output
    (((2, 0), (0, 2)), (3, 3), (2, 1)),   # one-sided padding, dilated rows
    (((2, 2), (2, 2)), (3, 3), (2, 2)),
])
def test_conv2d_shift_shared_padding(xp, monkeypatch, pads, kernel, dilation):
    """The shifted GEMMs' grid shares zero padding between rows and between images: exact for any
    padding (asymmetric, wider than the kernel reaches, dilated), primal, tangents and VJPs."""
    force_layout(monkeypatch, "shift")
    x, w, b = make(xp, (3, 2, 5, 6), 20), make(xp, (3, 2) + kernel, 21), make(xp, (3,), 22)
    f = lambda x, w, b: conv_mod._conv2d(x, w, b, stride=(1, 1), pads=pads, dilation=dilation,  # noqa: E731
                                         groups=1)[0]
    saved = saved_aux(monkeypatch, conv_mod._Grid)
    check_rules(f, (x, w, b), diff=(0, 1, 2), k=3, ref=lambda x, w, b: ref_conv2d(x, w, b, (1, 1), pads, dilation))
    assert saved and all(saved)


@pytest.mark.parametrize("diff", [(0,), (1,), (2,), (0, 1, 2)])
def test_conv2d_shift_tangents_equal_im2col(xp, diff):
    """Shift and im2col layouts give the same tangents and VJPs at the shapes the models use (k = 3,
    dilation and unbatched input included)."""
    rng = np.random.default_rng(4)
    for xs, ws, opts in [((3, 5, 16, 15), (6, 5, 3, 3), dict(padding=1, dilation=1)),
                         ((4, 17, 18), (3, 4, 3, 2), dict(padding=(2, 1), dilation=(2, 1)))]:
        args = [make(xp, xs, 0), make(xp, ws, 1), make(xp, (ws[0],), 2)]
        duals = [dt.DualTensor(a, xp.asarray(rng.standard_normal((3, *a.shape)))) if i in diff else a
                 for i, a in enumerate(args)]
        g = None
        res = {}
        for lay in ("shift", "batched"):
            with layout(lay):
                y = dt.conv2d(*duals, **opts)
                g = g if g is not None else xp.asarray(rng.standard_normal(y.shape))
                _, vjp_fn = dt.vjp(lambda x, w, b: dt.conv2d(x, w, b, **opts), *args)
                res[lay] = [to_np(y.tangent)] + [to_np(v) for v in vjp_fn(g)]
        for a, b in zip(res["shift"], res["batched"]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_conv2d_bias_only_tangent(xp):
    x, w, b = make(xp, (2, 3, 5, 5), 0), make(xp, (4, 3, 3, 3), 1), make(xp, (4,), 2)
    tb = xp.asarray(np.arange(8.0).reshape(2, 4))
    y = dt.conv2d(x, w, dt.DualTensor(b, tb))
    want = np.broadcast_to(np.arange(8.0).reshape(2, 1, 4, 1, 1), (2, 2, 4, 3, 3))
    np.testing.assert_array_equal(to_np(y.tangent), want)


def test_conv2d_works_on_parameters_and_module():
    x = make(np, (2, 3, 6, 6), 0, dtype=np.float32)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    y = layer(x)
    assert y.shape == (2, 4, 6, 6)
    want = ref_conv2d(x.astype(np.float64), layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64),
                      pads=sym((1, 1)))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("xs,ws,kw,match", [
    ((2, 3, 8, 8), (5, 4, 3, 3), {}, r"conv2d: input has 3 channels but weight expects 4 "
                                        r".*\(2, 3, 8, 8\).*\(5, 4, 3, 3\)"),
    ((2, 4, 8, 8), (6, 2, 3, 3), {"groups": 3}, r"conv2d: groups=3 must divide .*input shape \(2, 4, 8, 8\)"),
    ((2, 4, 8, 8), (5, 2, 3, 3), {"groups": 2}, r"conv2d: groups=2 must divide .*output channels \(5\)"),
    ((1, 2, 3, 3), (2, 2, 5, 5), {}, r"conv2d: kernel size \(5, 5\).*larger than the padded input size \(3, 3\)"),
    ((1, 2, 4, 3), (2, 2, 3, 3), {"dilation": 2}, r"conv2d: kernel size \(5, 5\) \(dilated\).*\(4, 3\)"),
    ((3, 8), (5, 3, 3, 3), {}, r"conv2d: input must be 4-d .* got shape \(3, 8\)"),
    ((1, 2, 3, 8, 8), (5, 3, 3, 3), {}, r"conv2d: input must be 4-d"),
    ((2, 3, 8, 8), (5, 3, 3), {}, r"conv2d: weight must be 4-d .* got shape \(5, 3, 3\)"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"stride": 2, "padding": "same"}, r"conv2d: padding='same' is not supported"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"padding": "full"}, r"conv2d: padding must be"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"padding": -1}, r"conv2d: padding must be >= 0"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"stride": 0}, r"conv2d: stride must be >= 1"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"dilation": (1, 2, 3)}, r"conv2d: dilation must be an int or a pair"),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"groups": 0}, r"conv2d: groups must be a positive int"),
])
def test_conv2d_bad_input(xs, ws, kw, match):
    with pytest.raises(ValueError, match=match):
        dt.conv2d(np.zeros(xs), np.zeros(ws), **kw)


def test_conv2d_bad_bias_and_dtype():
    x, w = np.zeros((2, 3, 8, 8)), np.zeros((5, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: bias has shape \(4,\), expected \(5,\)"):
        dt.conv2d(x, w, np.zeros(4))
    with pytest.raises(TypeError, match=r"conv2d: input must be a floating array.*int"):
        dt.conv2d(np.zeros((2, 3, 8, 8), dtype=np.int64), w)


def test_conv2d_shift_results_are_channels_last(xp):
    """Shifted-GEMM results and tangents are channels-last views in (N, C, H, W) order (no transposing
    copy), as are the input cotangents of a channels-last input; a following shifted convolution reads
    them directly."""
    x, w, b = make(xp, (2, 8, 16, 16), 0), make(xp, (6, 8, 3, 3), 1), make(xp, (6,), 2)
    t = xp.asarray(np.random.default_rng(3).standard_normal((3, 2, 8, 16, 16)))
    with layout("shift"):
        y = dt.conv2d(dt.DualTensor(x, t), dt.DualTensor(w, xp.ones((3, 6, 8, 3, 3))), b, padding=1)
        z = dt.conv2d(y, xp.ones((4, 6, 3, 3)), padding=1)
        # input cotangents take their input's layout (mixed layouts slow the elementwise rules down)
        _, vjp_fn = dt.vjp(lambda x: dt.conv2d(x, w, b, padding=1), x)
        assert vjp_fn(xp.ones((2, 6, 16, 16)))[0].flags.c_contiguous
        _, vjp_fn = dt.vjp(lambda y: dt.conv2d(y, xp.ones((4, 6, 3, 3)), padding=1), y.primal)
        gy = vjp_fn(xp.ones((2, 4, 16, 16)))[0]
    assert y.primal.strides[1] == y.primal.itemsize and y.tangent.strides[2] == y.tangent.itemsize
    assert gy.strides[1] == gy.itemsize
    with layout("batched"):
        want = dt.conv2d(dt.DualTensor(xp.ascontiguousarray(y.primal), xp.ascontiguousarray(y.tangent)),
                         xp.ones((4, 6, 3, 3)), padding=1)
    np.testing.assert_allclose(to_np(z.tangent), to_np(want.tangent), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("xs,ws,opts,live", [
    ((2, 3, 1, 1), (4, 3, 3, 3), dict(padding=1), (1, 2, 1, 2)),                 # ResNet stage 4 at 32x32 input
    ((2, 3, 2, 2), (4, 3, 3, 3), dict(padding=1, stride=2), (1, 3, 1, 3)),       # its strided first conv
    ((2, 3, 4, 4), (4, 3, 7, 7), dict(padding=3, stride=2), (1, 7, 1, 7)),
    ((2, 3, 1, 5), (4, 3, 3, 3), dict(padding=1), (1, 2, 0, 3)),                 # rows only
    ((2, 3, 1, 1), (4, 3, 3, 3), dict(padding=2, dilation=2), (1, 2, 1, 2)),
])
def test_conv2d_drops_kernel_taps_that_read_only_padding(xp, monkeypatch, xs, ws, opts, live):
    """Kernel rows/columns whose every window position is padding are sliced off the weight (with the
    padding adjusted): the same results, tangents and VJPs (zero for the dropped taps) with fewer products."""
    seen = []
    orig = conv_mod._conv2d.impl
    monkeypatch.setattr(conv_mod._conv2d, "impl", lambda x, w, b, **p: seen.append(w.shape) or orig(x, w, b, **p))
    x, w, b = make(xp, xs, 0), make(xp, ws, 1), make(xp, (ws[0],), 2)
    d = opts.get("dilation", 1)
    p, s = opts["padding"], opts.get("stride", 1)
    check_rules(lambda x, w, b: dt.conv2d(x, w, b, **opts), (x, w, b), diff=(0, 1, 2), k=3,
                ref=lambda x, w, b: ref_conv2d(x, w, b, (s, s), sym((p, p)), (d, d)))
    assert seen and set(seen) == {ws[:2] + (live[1] - live[0], live[3] - live[2])}
    _, vjp_fn = dt.vjp(lambda w: dt.conv2d(x, w, b, **opts), w)
    gw = to_np(vjp_fn(xp.ones(dt.conv2d(x, w, b, **opts).shape))[0])
    dead = np.ones(ws[2:], bool)
    dead[live[0]:live[1], live[2]:live[3]] = False
    assert (gw[:, :, dead] == 0).all()


def test_conv2d_where_every_tap_reads_padding(xp):
    """A dilated kernel whose taps all fall into the padding (found by hypothesis: this raised IndexError):
    the output is the bias, the weight's cotangent zero."""
    x, w, b = make(xp, (1, 2, 1, 1), 0), make(xp, (3, 2, 2, 2), 1), make(xp, (3,), 2)
    opts = dict(padding=1, dilation=2)
    check_rules(lambda x, w, b: dt.conv2d(x, w, b, **opts), (x, w, b), diff=(0, 1, 2), k=2,
                ref=lambda x, w, b: ref_conv2d(x, w, b, (1, 1), sym((1, 1)), (2, 2)))
    want = np.broadcast_to(to_np(b)[None, :, None, None], (1, 3, 1, 1))
    np.testing.assert_array_equal(to_np(dt.conv2d(x, w, b, **opts)), want)
