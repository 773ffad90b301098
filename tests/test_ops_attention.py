"""Rules of scaled_dot_product_attention: reference, finite differences, stacking, adjoints, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from dualtensor.backend import to_host
from opcheck import check_rules, make, noncontig

sdpa = dt.scaled_dot_product_attention


def ref_sdpa(q, k, v, mask=None, causal=False, scale=None):
    """Plain NumPy softmax attention; rows with every key masked give zeros."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    elif mask is not None and mask.dtype == bool:
        s = np.where(mask, s, -np.inf)
    elif mask is not None:
        s = s + mask
    out_shape = np.broadcast_shapes(s.shape[:-2], v.shape[:-2]) + (q.shape[-2], v.shape[-1])
    s = np.broadcast_to(s, out_shape[:-2] + s.shape[-2:])
    p = np.zeros(s.shape)
    for idx in np.ndindex(*s.shape[:-1]):
        row = s[idx]
        if np.isfinite(row).any():
            e = np.exp(row - row[np.isfinite(row)].max())
            p[idx] = e / e.sum()
    return np.matmul(p, v)


BATCHES = [((), (), ()), ((2,), (2,), (2,)), ((1,), (1,), (1,)), ((2, 3), (2, 3), (2, 3)),
           ((2, 3), (1, 3), (1, 3)), ((2, 1), (3,), (2, 3)), ((3,), (), ()), ((), (), (2,))]


@st.composite
def attention_case(draw):
    bq, bk, bv = draw(st.sampled_from(BATCHES))
    L, S, E, Ev = (draw(st.integers(1, 4)) for _ in range(4))
    mask = draw(st.sampled_from(["none", "bool", "float", "float_diff", "causal"]))
    diff = draw(st.sampled_from([(0, 1, 2), (0,), (1,), (2,), (0, 1), (1, 2)]))
    return bq, bk, bv, L, S, E, Ev, mask, diff


def build(xp, case, seed, contiguous=True, dtype=np.float64):
    bq, bk, bv, L, S, E, Ev, mask, diff = case
    q = make(xp, bq + (L, E), seed, dtype=dtype)
    k = make(xp, bk + (S, E), seed + 1, dtype=dtype)
    v = make(xp, bv + (S, Ev), seed + 2, dtype=dtype)
    if not contiguous:
        q, k, v = noncontig(q), noncontig(k), noncontig(v)
    batch = np.broadcast_shapes(bq, bk, bv)
    m = None
    if mask == "bool":
        m = make(xp, batch[1:] + (L, S), seed + 3) > -0.3
        m[..., 0] = True  # no fully-masked row here (tested separately)
    elif mask in ("float", "float_diff"):
        m = make(xp, (L, S), seed + 3, dtype=dtype)
    return q, k, v, m


@given(case=attention_case(), seed=st.integers(0, 2 ** 16), contiguous=st.booleans(),
       scale=st.sampled_from([None, 0.3]))
def test_attention_rules(xp, case, seed, contiguous, scale):
    q, k, v, m = build(xp, case, seed, contiguous)
    causal = case[7] == "causal"
    diff = case[8] + ((3,) if case[7] == "float_diff" else ())

    def f(q, k, v, m):
        return sdpa(q, k, v, m, is_causal=causal, scale=scale)

    check_rules(f, (q, k, v, m), diff=diff, ref=lambda q, k, v, m: ref_sdpa(q, k, v, m, causal, scale))


@pytest.mark.parametrize("shapes", [((5, 3), (4, 3), (4, 2)),                    # unbatched, L != S, Ev != E
                                    ((2, 3, 4), (2, 5, 4), (2, 5, 6)),           # (B, L, E)
                                    ((2, 2, 3, 4), (2, 2, 3, 4), (2, 2, 3, 4)),  # (B, H, L, E)
                                    ((1, 1, 2, 3), (1, 1, 4, 3), (1, 1, 4, 3))])  # batch 1
@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_attention_shapes(xp, shapes, mask):
    (sq, sk, sv) = shapes
    q, k, v = make(xp, sq, 1), make(xp, sk, 2), make(xp, sv, 3)
    L, S = sq[-2], sk[-2]
    m = None
    if mask == "bool":
        m = make(xp, (L, S), 4) > 0
        m[:, -1] = True
    elif mask == "float":
        m = make(xp, sq[:-2] + (L, S), 4)
    causal = mask == "causal"
    f = lambda q, k, v: sdpa(q, k, v, attn_mask=m, is_causal=causal)  # noqa: E731
    m_host = None if m is None else to_host(m)
    out = check_rules(f, (q, k, v), diff=(0, 1, 2), ref=lambda q, k, v: ref_sdpa(q, k, v, m_host, causal))
    assert out.shape == (3,) + sq[:-2] + (L, sv[-1])


@pytest.mark.parametrize("batches", [((), (), (2,)), ((2, 1), (3,), (2, 3)), ((3,), (), ()), ((), (2, 1), (3,))])
def test_broadcast_batch_axes(xp, batches):
    # the batch axes of q, k, v and the mask broadcast; the tangent axis never mixes with them
    case = batches + (3, 2, 4, 3, "float_diff", (0, 1, 2))
    q, k, v, m = build(xp, case, 7)
    m = make(xp, (2, 1, 3, 2), 8) if len(np.broadcast_shapes(*batches)) == 2 else m
    check_rules(sdpa, (q, k, v, m), diff=(0, 1, 2, 3), ref=ref_sdpa)
    check_rules(sdpa, (q, k, v, m), diff=(2,))
    check_rules(sdpa, (q, k, v, m), diff=(3,))


def test_functional_name():
    from dualtensor.nn import functional as F
    assert F.scaled_dot_product_attention is dt.scaled_dot_product_attention


def test_noncontiguous_transposed_heads(xp):
    # heads split by reshape + transpose, as in a transformer: (B, L, H, E) -> (B, H, L, E) views
    q = make(xp, (2, 3, 2, 4), 5).transpose(0, 2, 1, 3)
    k = make(xp, (2, 5, 2, 4), 6).transpose(0, 2, 1, 3)
    v = make(xp, (2, 5, 2, 3), 7).transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous
    check_rules(sdpa, (q, k, v), diff=(0, 1, 2), ref=ref_sdpa)


def test_fully_masked_rows_are_zero(xp):
    q, k, v = make(xp, (2, 3, 4), 1), make(xp, (2, 5, 4), 2), make(xp, (2, 5, 3), 3)
    m = xp.ones((3, 5), bool)
    m[1] = False
    out = sdpa(q, k, v, m)
    assert np.all(to_host(out[:, 1]) == 0) and np.all(np.isfinite(to_host(out)))
    check_rules(lambda q, k, v: sdpa(q, k, v, m), (q, k, v), diff=(0, 1, 2),
                ref=lambda q, k, v: ref_sdpa(q, k, v, to_host(m)))
    fm = xp.where(m, 0.0, -np.inf)  # the same through an additive -inf mask
    np.testing.assert_allclose(to_host(sdpa(q, k, v, fm)), to_host(out), rtol=1e-14, atol=0)
    d = sdpa(dt.dual(q, make(xp, (2, 2, 3, 4), 9)), k, v, fm)
    assert np.all(np.isfinite(to_host(d.tangent)))


def test_large_logits_stable(xp):
    q = make(xp, (3, 4), 1) * 1e3
    k = make(xp, (5, 4), 2)
    v = make(xp, (5, 2), 3)
    out = sdpa(q, k, v)
    assert np.all(np.isfinite(to_host(out)))
    np.testing.assert_allclose(to_host(out), ref_sdpa(to_host(q), to_host(k), to_host(v)), rtol=1e-12)


def test_jvp_reuses_primal_softmax(monkeypatch):
    # all k tangents together: one exp (the primal softmax) and a fixed number of matmuls, whatever k is
    q, k, v = make(np, (2, 3, 4), 1), make(np, (2, 5, 4), 2), make(np, (2, 5, 3), 3)
    calls = {"exp": 0, "matmul": 0}

    def counting(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(np, "exp", counting("exp", np.exp))
    monkeypatch.setattr(np, "matmul", counting("matmul", np.matmul))
    for kk in (1, 7):
        calls.update(exp=0, matmul=0)
        tq, tk, tv = make(np, (kk, 2, 3, 4), 4), make(np, (kk, 2, 5, 4), 5), make(np, (kk, 2, 5, 3), 6)
        out = sdpa(dt.dual(q, tq), dt.dual(k, tk), dt.dual(v, tv), is_causal=True)
        assert out.tangent.shape == (kk, 2, 3, 3)
        assert calls == {"exp": 1, "matmul": 2 + 4}, calls
    monkeypatch.undo()
    np.testing.assert_allclose(out.primal, ref_sdpa(q, k, v, causal=True), rtol=1e-12)


def test_float32_preserved(xp):
    case = ((2,), (2,), (2,), 3, 4, 5, 2, "float_diff", (0, 1, 2))
    q, k, v, m = build(xp, case, 11, dtype=np.float32)
    tq, tk, tv, tm = (make(xp, (3,) + a.shape, 20 + i, dtype=np.float32) for i, a in enumerate((q, k, v, m)))
    out = sdpa(dt.dual(q, tq), dt.dual(k, tk), dt.dual(v, tv), dt.dual(m, tm))
    assert out.primal.dtype == np.float32 and out.tangent.dtype == np.float32
    # agrees with the float64 computation to float32 accuracy
    up = lambda a: a.astype(np.float64)  # noqa: E731
    out64 = sdpa(dt.dual(up(q), up(tq)), dt.dual(up(k), up(tk)), dt.dual(up(v), up(tv)), dt.dual(up(m), up(tm)))
    np.testing.assert_allclose(to_host(out.primal), to_host(out64.primal), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_host(out.tangent), to_host(out64.tangent), rtol=1e-4, atol=1e-4)
    bm = make(xp, (3, 4), 3) > 0
    assert sdpa(q, k, v, bm, scale=np.float64(0.5)).dtype == np.float32
    assert sdpa(q, k, v, is_causal=True).dtype == np.float32
    # reverse mode keeps float32 too
    _, fn = dt.vjp(lambda q, k, v: sdpa(q, k, v, bm), q, k, v)
    assert all(g.dtype == np.float32 for g in fn(xp.ones((2, 3, 2), np.float32)))


def test_bad_inputs(xp):
    q, k, v = make(xp, (2, 3, 4), 1), make(xp, (2, 5, 4), 2), make(xp, (2, 5, 6), 3)
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: query has embedding size 4 but key has 3"):
        sdpa(q, make(xp, (2, 5, 3), 2), v)
    with pytest.raises(ValueError, match=r"key has sequence length 5 but value has 4.*value shape \(2, 4, 6\)"):
        sdpa(q, k, make(xp, (2, 4, 6), 3))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 4\) does not broadcast .* \(2, 3, 5\)"):
        sdpa(q, k, v, xp.ones((3, 4), bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 3, 5\) does not broadcast"):
        sdpa(q, k, v, xp.zeros((3, 3, 5)))
    with pytest.raises(ValueError, match=r"batch dimensions do not broadcast.*"
                                         r"query shape \(2, 3, 4\), key shape \(3, 5, 4\)"):
        sdpa(q, make(xp, (3, 5, 4), 2), make(xp, (3, 5, 6), 2))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        sdpa(q, k, v, xp.ones((3, 5), bool), is_causal=True)
    with pytest.raises(ValueError, match=r"query must have at least 2 dimensions.*\(4,\)"):
        sdpa(q[0, 0], k, v)
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        sdpa(q, k, v, xp.ones((3, 5), np.int64))
    with pytest.raises(TypeError, match="key must have a floating dtype"):
        sdpa(q, xp.ones((2, 5, 4), np.int64), v)
    with pytest.raises(NotImplementedError, match="dropout_p > 0"):
        sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\]"):
        sdpa(q, k, v, dropout_p=1.5)
