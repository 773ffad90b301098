"""Rules of matmul, linear and einsum: references, finite differences, stacking, adjoints, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import dualtensor as dt
from opcheck import broadcast_pair, check_rules, make, noncontig, rel_err


def _maybe_noncontig(a, flag):
    return noncontig(a) if flag else a


@st.composite
def matmul_shapes(draw):
    """Operand shapes covering 1-d x 1-d, 1-d x 2-d, 2-d x 1-d, 2-d x 2-d and broadcast batches."""
    m, n, p = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["1x1", "1x2", "2x1", "2x2", "batched", "batched", "1xb", "bx1"]))
    if kind == "1x1":
        return (n,), (n,)
    if kind == "1x2":
        return (n,), (n, p)
    if kind == "2x1":
        return (m, n), (n,)
    if kind == "2x2":
        return (m, n), (n, p)
    ba, bb = draw(broadcast_pair(max_dims=2, max_side=3))  # includes batch 1 and missing batch dims
    if kind == "1xb":
        return (n,), bb + (n, p)
    if kind == "bx1":
        return ba + (m, n), (n,)
    return ba + (m, n), bb + (n, p)


@given(sh=matmul_shapes(), seed=st.integers(0, 2 ** 16), nc=st.tuples(st.booleans(), st.booleans()))
def test_matmul(xp, sh, seed, nc):
    a = _maybe_noncontig(make(xp, sh[0], seed), nc[0])
    b = _maybe_noncontig(make(xp, sh[1], seed + 1), nc[1])
    check_rules(dt.matmul, (a, b), diff=(0, 1), ref=np.matmul)
    check_rules(lambda a, b: a @ b, (a, b), diff=(0,), k=2)  # operator with a constant right operand
    check_rules(lambda a, b: a @ b, (a, b), diff=(1,), k=2)  # __rmatmul__ with a constant left operand


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((3,), (3, 2)), ((4, 3), (3,)), ((4, 3), (3, 2)),
                                   ((2, 4, 3), (3, 2)), ((4, 3), (2, 3, 2)), ((2, 1, 4, 3), (5, 3, 2)),
                                   ((3,), (2, 3, 2)), ((2, 4, 3), (3,)), ((1, 4, 3), (1, 3, 2))])
def test_matmul_k16_equals_single_tangents(xp, sa, sb):
    a, b = make(xp, sa, 1), make(xp, sb, 2)
    rng = np.random.default_rng(3)
    ta, tb = xp.asarray(rng.standard_normal((16, *sa))), xp.asarray(rng.standard_normal((16, *sb)))
    stacked = dt.matmul(dt.dual(a, ta), dt.dual(b, tb)).tangent
    for j in range(16):
        single = dt.matmul(dt.dual(a, ta[j:j + 1]), dt.dual(b, tb[j:j + 1])).tangent[0]
        assert rel_err(stacked[j], single) <= 1e-12
        expect = np.matmul(ta[j], b) + np.matmul(a, tb[j])
        assert rel_err(stacked[j], expect) <= 1e-12
    check_rules(dt.matmul, (a, b), diff=(0, 1), k=5)


@pytest.mark.parametrize("sa,sb", [((6, 5), (5, 4)), ((3, 6, 5), (5, 4)), ((6, 5), (3, 5, 4)), ((5,), (5, 4))])
def test_matmul_tangents_share_one_gemm(monkeypatch, sa, sb):
    """Primal + one call per tangent argument, whatever k (k is folded into the GEMM)."""
    calls = []
    real = np.matmul

    def counting(*args, **kw):
        calls.append([np.shape(x) for x in args])
        return real(*args, **kw)

    a, b = make(np, sa, 0), make(np, sb, 1)
    da, db = dt.dual(a, np.ones((7, *sa))), dt.dual(b, np.ones((7, *sb)))
    monkeypatch.setattr(np, "matmul", counting)
    dt.matmul(da, db)
    assert len(calls) == 3, calls
    calls.clear()
    w = make(np, (4, 5), 2)
    dt.linear(dt.dual(make(np, (3, 5), 3), np.ones((7, 3, 5))), dt.dual(w, np.ones((7, 4, 5))))
    assert len(calls) == 3, calls


@given(batch=st.sampled_from([(), (1,), (3,), (2, 3)]), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16), nc=st.booleans())
def test_linear(xp, batch, n_in, n_out, bias, seed, nc):
    x = _maybe_noncontig(make(xp, batch + (n_in,), seed), nc)
    w = make(xp, (n_out, n_in), seed + 1)
    if bias:
        b = make(xp, (n_out,), seed + 2)
        check_rules(dt.linear, (x, w, b), diff=(0, 1, 2), ref=lambda x, w, b: x @ w.T + b)
        check_rules(dt.linear, (x, w, b), diff=(2,), k=2)
    else:
        check_rules(lambda x, w: dt.linear(x, w), (x, w), diff=(0, 1), ref=lambda x, w: x @ w.T)
    check_rules(dt.linear, (x, w), diff=(1,), k=2)


# subscripts, operand shapes
EINSUM = [
    ("ii->", [(3, 3)]),  # trace
    ("ii", [(4, 4)]),  # implicit trace
    ("ii->i", [(3, 3)]),  # diagonal
    ("ij->", [(2, 3)]),  # sum reduction
    ("ij->j", [(2, 3)]),
    ("ij->ji", [(2, 3)]),
    ("i,j->ij", [(3,), (4,)]),  # outer product
    ("i,i->", [(4,), (4,)]),
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 4)]),  # implicit output
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),  # batched matmul
    ("bij,jk->bik", [(2, 3, 4), (4, 2)]),
    ("ij,ij->i", [(1, 3), (2, 3)]),  # size-1 label broadcasting (as NumPy)
    ("ii,i->i", [(3, 3), (3,)]),
    ("iij->j", [(2, 2, 3)]),
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 2)]),  # ellipsis broadcasting
    ("...i,...i", [(2, 3), (3,)]),  # implicit output with ellipsis
    ("i...->...", [(3, 2, 2)]),
    ("Ab,bA", [(2, 3), (3, 2)]),
]


@pytest.mark.parametrize("spec,shps", EINSUM, ids=[c[0] for c in EINSUM])
@given(seed=st.integers(0, 2 ** 16), nc=st.booleans())
def test_einsum(xp, spec, shps, seed, nc):
    ops = tuple(_maybe_noncontig(make(xp, s, seed + i), nc and i == 0) for i, s in enumerate(shps))
    f = lambda *o: dt.einsum(spec, *o)  # noqa: E731
    check_rules(f, ops, diff=tuple(range(len(ops))), ref=lambda *o: np.einsum(spec, *o), ref_rtol=1e-12)
    if len(ops) > 1:
        check_rules(f, ops, diff=(len(ops) - 1,), k=2)


def test_einsum_implicit_output_order():
    a, b = make(np, (2, 3), 0), make(np, (4,), 1)
    for spec in ("aB,c", "Ba,c", "cb,a"):
        assert dt.einsum(spec, a, b).shape == np.einsum(spec, a, b).shape


def test_float32_stays_float32():
    f32 = np.float32
    a, b = make(np, (2, 3, 4), 0, dtype=f32), make(np, (4, 5), 1, dtype=f32)
    ta, tb = make(np, (3, 2, 3, 4), 2, dtype=f32), make(np, (3, 4, 5), 3, dtype=f32)
    da, db = dt.dual(a, ta), dt.dual(b, tb)
    w, bias = make(np, (5, 4), 4, dtype=f32), make(np, (5,), 5, dtype=f32)
    outs = [dt.matmul(da, db), da @ b, a @ db, dt.linear(da, dt.dual(w, make(np, (3, 5, 4), 6, dtype=f32)), bias),
            dt.linear(a, w, dt.dual(bias, np.ones((3, 5), f32))), dt.einsum("bij,jk->bik", da, db)]
    for y in outs:
        assert y.primal.dtype == f32 and y.tangent.dtype == f32
    _, vjp_fn = dt.vjp(lambda a, w, b: dt.linear(a, w, b).sum() + dt.einsum("bij->", a), a, w, bias)
    assert all(c.dtype == f32 for c in vjp_fn(np.ones((), f32)))


def test_results_are_arrays():
    v = make(np, (3,), 0)
    assert type(dt.matmul(v, v)) is np.ndarray and dt.matmul(v, v).shape == ()
    assert type(dt.einsum("i,i", v, v)) is np.ndarray
    assert dt.matmul(dt.dual(v, np.ones((2, 3))), v).tangent.shape == (2,)


def test_bad_input():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) are not aligned \(3 != 4\)"):
        dt.matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(3,\) and \(4,\) are not aligned \(3 != 4\)"):
        dt.dual(np.ones(3), np.ones((1, 3))) @ np.ones(4)
    with pytest.raises(ValueError, match=r"matmul: operands must be at least 1-d, got shapes \(\) and \(3,\)"):
        dt.matmul(np.float64(2.0), np.ones(3))
    with pytest.raises(ValueError, match=r"matmul: batch dimensions \(2,\) and \(3,\) do not broadcast"):
        dt.matmul(np.ones((2, 4, 3)), np.ones((3, 3, 5)))
    with pytest.raises(ValueError, match=r"linear: input has 5 features but weight expects 4 "
                                         r"\(input shape \(2, 5\), weight shape \(3, 4\)\)"):
        dt.linear(np.ones((2, 5)), np.ones((3, 4)))
    with pytest.raises(TypeError, match=r"linear: input must have a floating dtype, got int64"):
        dt.linear(np.ones((2, 4), dtype=np.int64), np.ones((3, 4)))
    with pytest.raises(TypeError, match=r"linear: weight must have a floating dtype"):
        dt.linear(np.ones((2, 4)), np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"linear: weight must be 2-d \(out_features, in_features\)"):
        dt.linear(np.ones((2, 4)), np.ones(4))
    with pytest.raises(ValueError, match=r"linear: input must be at least 1-d"):
        dt.linear(np.float64(1.0), np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(3,\)"):
        dt.linear(np.ones((2, 4)), np.ones((3, 4)), np.ones(4))
    with pytest.raises(TypeError, match=r"DualTensor: differentiable values must have a floating dtype"):
        dt.dual(np.ones(3, dtype=np.int64), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"einsum: subscripts 'ij,jk->ik' name 2 operand\(s\) but 1 were given"):
        dt.einsum("ij,jk->ik", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: operand of shape \(2, 3\) has 2 dimension\(s\) but subscript 'ijk'"):
        dt.einsum("ijk->i", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: label 'j' has size 3 in one operand and 4 in another"):
        dt.einsum("ij,jk->ik", np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"einsum: output label 'z' of 'ij->z' appears in no input"):
        dt.einsum("ij->z", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: output subscript of 'ij->ii' repeats a label"):
        dt.einsum("ij->ii", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: repeated label 'i' in 'ii' spans dimensions of different sizes"):
        dt.einsum("ii->i", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: invalid subscript term"):
        dt.einsum("i1->i", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: output 'i' of '...i->i' has no '...'"):
        dt.einsum("...i->i", np.ones((2, 3)))
