"""cross_entropy, nll_loss and mse_loss: torch-semantics references, rules, options, dtypes, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from opcheck import check_rules, make, noncontig, shapes, to_np

REDUCTIONS = ["mean", "sum", "none"]
IGNORE = -100


# ---- plain NumPy references (loops over samples, following torch's definitions) ---------------------

def _log_softmax(a):  # rows of (M, C)
    z = a - a.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _rows(x):
    """(M, C) rows of logits and the per-sample output shape."""
    if x.ndim == 1:
        return x[None], ()
    xm = np.moveaxis(x, 1, -1)
    return xm.reshape(-1, x.shape[1]), xm.shape[:-1]


def ce_index_ref(x, target, weight=None, reduction="mean", ls=0.0, ignore_index=IGNORE, log_probs=False):
    """torch: (1 - ls) * nll_loss(log_softmax(x), w) + ls / C * smoothing term, same weighted denominator."""
    rows, out_shape = _rows(x)
    m, c = rows.shape
    logp = rows if log_probs else _log_softmax(rows)
    w = np.ones(c) if weight is None else weight
    tg = np.asarray(target).reshape(-1)
    nll, smooth, wsum = np.zeros(m), np.zeros(m), 0.0
    for i in range(m):
        if tg[i] == ignore_index:
            continue
        nll[i] = -w[tg[i]] * logp[i, tg[i]]
        smooth[i] = -(w * logp[i]).sum()
        wsum += w[tg[i]]
    per = (1 - ls) * nll + (ls / c) * smooth
    if reduction == "none":
        return per.reshape(out_shape)
    return per.sum() if reduction == "sum" else per.sum() / wsum


def ce_prob_ref(x, y, weight=None, reduction="mean", ls=0.0):
    rows, out_shape = _rows(x)
    yr, _ = _rows(y)
    c = rows.shape[1]
    w = np.ones(c) if weight is None else weight
    yr = (1 - ls) * yr + ls / c
    per = np.array([-(w * yr[i] * _log_softmax(rows)[i]).sum() for i in range(rows.shape[0])])
    if reduction == "none":
        return per.reshape(out_shape)
    return per.sum() if reduction == "sum" else per.mean()


def mse_ref(x, y, reduction):
    d = (x - y) ** 2
    return d if reduction == "none" else d.sum() if reduction == "sum" else d.mean()


# ---- hypothesis cases --------------------------------------------------------------------------------

@st.composite
def ce_case(draw):
    """Logits shape (C,), (N, C) or (N, C, d1, ...), with N = 1 and C = 1 included."""
    c = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["unbatched", "2d", "2d", "nd"]))
    if kind == "unbatched":
        return (c,)
    extra = draw(shapes(1, 2, 1, 3)) if kind == "nd" else ()
    return (draw(st.integers(1, 4)), c) + extra


def _index_target(xp, xs, seed, ignore):
    ts = xs[:1] + xs[2:] if len(xs) > 1 else ()
    rng = np.random.default_rng(seed)
    t = rng.integers(0, xs[0 if len(xs) == 1 else 1], size=ts)
    if ignore and t.size:
        drop = np.asarray(rng.random(ts) < 0.4)
        drop.flat[0] = False  # keep one sample so the weighted mean is defined
        t = np.where(drop, IGNORE, t)
    return xp.asarray(t)


def _weight(xp, c, seed, use):
    return xp.asarray(0.5 + np.random.default_rng(seed).random(c)) if use else None


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(xs=ce_case(), seed=st.integers(0, 2 ** 16), weighted=st.booleans(), ls=st.sampled_from([0.0, 0.25]),
       ignore=st.booleans(), contiguous=st.booleans())
def test_cross_entropy_index_targets(xp, reduction, xs, seed, weighted, ls, ignore, contiguous):
    x = make(xp, xs, seed)
    if not contiguous:
        x = noncontig(x)
    c = xs[0 if len(xs) == 1 else 1]
    target, w = _index_target(xp, xs, seed + 1, ignore), _weight(xp, c, seed + 2, weighted)
    check_rules(lambda x: dt.cross_entropy(x, target, w, reduction, ls), (x,), seed=seed + 7,
                ref=lambda x: ce_index_ref(x, to_np(target), None if w is None else to_np(w), reduction, ls))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(xs=ce_case(), seed=st.integers(0, 2 ** 16), weighted=st.booleans(), ls=st.sampled_from([0.0, 0.1]))
def test_cross_entropy_probability_targets(xp, reduction, xs, seed, weighted, ls):
    """Class-probability targets (input's shape) are differentiable too."""
    x, y = make(xp, xs, seed), make(xp, xs, seed + 1, "positive")
    c = xs[0 if len(xs) == 1 else 1]
    w = _weight(xp, c, seed + 2, weighted)
    check_rules(lambda x, y: dt.cross_entropy(x, y, w, reduction, ls), (x, y), diff=(0, 1), seed=seed + 7,
                ref=lambda x, y: ce_prob_ref(x, y, None if w is None else to_np(w), reduction, ls))
    check_rules(lambda x: dt.cross_entropy(x, y, w, reduction, ls), (x,), seed=seed + 8)


def test_cross_entropy_ignore_index_inside_class_range(xp):
    x, t = make(xp, (5, 3), 1), xp.asarray([0, 1, 2, 1, 0])
    w = xp.asarray([1.0, 2.0, 3.0])
    for red in REDUCTIONS:
        check_rules(lambda x, r=red: dt.cross_entropy(x, t, w, r, 0.2, ignore_index=1), (x,), seed=3,
                    ref=lambda x, r=red: ce_index_ref(x, to_np(t), to_np(w), r, 0.2, ignore_index=1))
    per = to_np(dt.cross_entropy(x, t, reduction="none", ignore_index=1))
    assert per[1] == 0 and per[3] == 0


def test_cross_entropy_known_values(xp):
    # uniform logits: log C; a confident right answer: ~0
    np.testing.assert_allclose(float(dt.cross_entropy(xp.zeros((3, 5)), xp.asarray([0, 3, 4]))), np.log(5), rtol=1e-15)
    assert float(dt.cross_entropy(xp.asarray([[50.0, 0.0]]), xp.asarray([0]))) < 1e-20
    # JVP of the mean is sum_i sum_c (p_ic - y_ic) t_ic / N (one contraction for all k)
    x, t = make(xp, (4, 3), 1), make(xp, (6, 4, 3), 2)
    tg = np.array([2, 0, 1, 1])
    out = dt.cross_entropy(dt.dual(x, t), xp.asarray(tg))
    p = np.exp(_log_softmax(to_np(x)))
    expect = ((p - np.eye(3)[tg])[None] * to_np(t)).sum(axis=(1, 2)) / 4
    np.testing.assert_allclose(to_np(out.tangent), expect, rtol=1e-13)


def test_cross_entropy_all_ignored_mean_is_nan_like_torch(xp):
    with np.errstate(all="ignore"):
        out = dt.cross_entropy(make(xp, (2, 3), 1), xp.asarray([IGNORE, IGNORE]))
    assert np.isnan(float(out))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(xs=ce_case(), seed=st.integers(0, 2 ** 16), weighted=st.booleans(), ignore=st.booleans())
def test_nll_loss(xp, reduction, xs, seed, weighted, ignore):
    x = make(xp, xs, seed)
    c = xs[0 if len(xs) == 1 else 1]
    target, w = _index_target(xp, xs, seed + 1, ignore), _weight(xp, c, seed + 2, weighted)
    check_rules(lambda x: dt.nll_loss(x, target, w, reduction), (x,), seed=seed + 7,
                ref=lambda x: ce_index_ref(x, to_np(target), None if w is None else to_np(w), reduction,
                                           log_probs=True))


def test_nll_of_log_softmax_is_cross_entropy(xp):
    x, t = make(xp, (4, 3, 2), 1), xp.asarray(np.random.default_rng(0).integers(0, 3, (4, 2)))
    tan = make(xp, (2, 4, 3, 2), 2)
    a = dt.cross_entropy(dt.dual(x, tan), t)
    b = dt.nll_loss(dt.log_softmax(dt.dual(x, tan), 1), t)
    np.testing.assert_allclose(to_np(a.primal), to_np(b.primal), rtol=1e-14)
    np.testing.assert_allclose(to_np(a.tangent), to_np(b.tangent), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(shape=shapes(0, 3), seed=st.integers(0, 2 ** 16))
def test_mse_loss(xp, reduction, shape, seed):
    x, y = make(xp, shape, seed), make(xp, shape, seed + 1)
    check_rules(lambda x, y: dt.mse_loss(x, y, reduction), (x, y), diff=(0, 1), seed=seed + 7,
                ref=lambda x, y: mse_ref(x, y, reduction))
    check_rules(lambda x: dt.mse_loss(x, y, reduction), (x,), seed=seed + 8)  # constant target


def test_float32_stays_float32(xp):
    f32 = np.float32
    x = dt.dual(make(xp, (4, 3), 1, dtype=f32), make(xp, (2, 4, 3), 2, dtype=f32))
    t = xp.asarray([0, 2, 1, IGNORE])
    w = xp.asarray([1.0, 2.0, 0.5])  # float64 class weights do not promote
    y = make(xp, (4, 3), 3, dtype=np.float64)  # nor does a float64 constant target
    outs = [dt.cross_entropy(x, t, w, red, 0.1) for red in REDUCTIONS]
    outs += [dt.cross_entropy(x, y), dt.nll_loss(x, t, w), dt.mse_loss(x, y), dt.mse_loss(x, y, "none")]
    for o in outs:
        assert o.primal.dtype == f32 and o.tangent.dtype == f32, (o.primal.dtype, o.tangent.dtype)
    out, vjp_fn = dt.vjp(lambda x: dt.cross_entropy(x, t), make(xp, (4, 3), 1, dtype=f32))
    assert out.dtype == f32 and vjp_fn(xp.ones((), f32))[0].dtype == f32


def test_errors(xp):
    x = make(xp, (4, 3), 1)
    t = xp.asarray([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"cross_entropy: target shape \(5,\) does not match input shape \(4, 3\): "
                                         r"expected \(4,\) \(class indices\) or \(4, 3\)"):
        dt.cross_entropy(x, xp.asarray([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: target values must be class indices in \[0, 3\) or "
                                         r"ignore_index=-100, got \[-1, 3\]"):
        dt.cross_entropy(x, xp.asarray([0, 3, -1, 1]))
    with pytest.raises(TypeError, match=r"cross_entropy: class-index targets must have an integer dtype, got float64"):
        dt.cross_entropy(x, xp.asarray([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match=r"cross_entropy: class-index targets must have an integer dtype, got bool"):
        dt.cross_entropy(x, xp.asarray([True, False, True, False]))
    with pytest.raises(TypeError, match=r"holds class probabilities and must be floating, got dtype int64"):
        dt.cross_entropy(x, xp.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        dt.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match=r"cross_entropy: weight must have shape \(3,\).*got shape \(4,\)"):
        dt.cross_entropy(x, t, weight=xp.ones(4))
    with pytest.raises(TypeError, match="cross_entropy: the class weight is a constant"):
        dt.cross_entropy(x, t, weight=dt.dual(xp.ones(3), xp.ones((1, 3))))
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing must be in \[0, 1\], got 1.5"):
        dt.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="cross_entropy: input must have shape .* got a 0-d input"):
        dt.cross_entropy(xp.asarray(1.0), xp.asarray(0))
    with pytest.raises(TypeError, match=r"cross_entropy: input must be a floating array"):
        dt.cross_entropy(xp.zeros((4, 3), dtype=np.int64), t)
    with pytest.raises(ValueError, match=r"nll_loss: target shape \(4, 3\) does not match input shape \(4, 3\): "
                                         r"expected \(4,\) \(class indices\)$"):
        dt.nll_loss(x, make(xp, (4, 3), 2))
    with pytest.raises(ValueError, match=r"nll_loss: target values must be class indices in \[0, 3\)"):
        dt.nll_loss(x, xp.asarray([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="nll_loss: reduction must be"):
        dt.nll_loss(x, t, reduction=None)
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(4, 3\) and target shape \(3,\) must match"):
        dt.mse_loss(x, make(xp, (3,), 2))
    with pytest.raises(ValueError, match="mse_loss: reduction must be"):
        dt.mse_loss(x, x, reduction="batchmean")


def test_cross_entropy_is_finite_with_a_minus_infinite_non_target_logit():
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]])
    y = np.array([0, 1])
    loss = dt.nn.functional.cross_entropy(logits, y)
    expect = np.mean([np.log(1 + np.e), -0.5 + np.log(np.exp(2.0) + np.exp(0.5))])
    assert np.isfinite(loss) and float(loss) == pytest.approx(expect, rel=1e-14)
    t = np.ones((1, *logits.shape))
    t[:, np.isinf(logits)] = 0
    out = dt.nn.functional.cross_entropy(dt.dual(logits, t), y)
    assert np.all(np.isfinite(out.tangent))
