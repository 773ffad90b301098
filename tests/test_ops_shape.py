"""Rules of the shape primitives: reshape/transpose/broadcast, indexing, joining, splitting, padding."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import dualtensor as dt
from dualtensor.tensor import Zero
from opcheck import check_rules, make, noncontig, shapes, to_np


def maybe_noncontig(x, flag):
    return noncontig(x) if flag else x


def dual(xp, shape, k=2, seed=0, dtype=np.float64):
    return dt.dual(make(xp, shape, seed, dtype=dtype), make(xp, (k, *shape), seed + 1, dtype=dtype))


def assert_tangent_matches(out, d, fn):
    """out.tangent[j] == fn(d.tangent[j]) for every tangent j (fn is the NumPy operation)."""
    t = to_np(d.tangent_array())
    want = np.stack([np.asarray(fn(t[j])) for j in range(t.shape[0])])
    np.testing.assert_array_equal(to_np(out.tangent_array()), want)
    np.testing.assert_array_equal(to_np(out.primal), np.asarray(fn(to_np(d.primal))))


# ---------------------------------------------------------------- reshape family

@st.composite
def reshape_case(draw):
    shape = draw(shapes(0, 3, 1, 4))
    size = int(np.prod(shape))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        target = (size,)
    elif choice == 1:
        target = (-1,)
    elif choice == 2:
        target = tuple(reversed(shape))
    elif choice == 3:
        target = (1,) + shape + (1,)
    elif choice == 4:  # split the size into two factors, one given as -1
        f = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        target = (f, -1) if draw(st.booleans()) else (-1, f)
    else:
        target = () if size == 1 else (size, 1)
    return shape, target


@given(case=reshape_case(), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_reshape(xp, case, seed, contiguous):
    shape, target = case
    x = maybe_noncontig(make(xp, shape, seed), not contiguous)
    check_rules(lambda a: dt.reshape(a, target), (x,), ref=lambda a: np.reshape(a, target))


def test_reshape_0d(xp):
    x = make(xp, (), 1)
    check_rules(lambda a: dt.reshape(a, (1, 1)), (x,), ref=lambda a: a.reshape(1, 1))
    y = make(xp, (1, 1), 2)
    check_rules(lambda a: dt.reshape(a, ()), (y,), ref=lambda a: a.reshape(()))
    check_rules(lambda a: dt.reshape(a, -1), (x,), ref=lambda a: a.reshape(-1))


@given(shape=shapes(0, 4, 1, 3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_flatten(xp, shape, seed, data):
    x = make(xp, shape, seed)
    nd = max(len(shape), 1)
    s = data.draw(st.integers(-nd, nd - 1))
    e = data.draw(st.integers(-nd, nd - 1))
    assume(s % nd <= e % nd)

    def ref(a):
        if a.ndim == 0:
            return a.reshape(1)
        s_, e_ = s % a.ndim, e % a.ndim
        return a.reshape(a.shape[:s_] + (-1,) + a.shape[e_ + 1:])

    check_rules(lambda a: dt.flatten(a, s, e), (x,), ref=ref)


@given(shape=shapes(0, 4, 1, 3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_squeeze(xp, shape, seed, data):
    x = noncontig(make(xp, shape, seed))
    ones = [i for i, n in enumerate(shape) if n == 1]
    axis = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(ones), unique=True).map(tuple)
                               if ones else st.none()))
    check_rules(lambda a: dt.squeeze(a, axis), (x,), ref=lambda a: np.squeeze(a, axis))


def test_squeeze_to_0d(xp):
    x = make(xp, (1, 1, 1), 3)
    check_rules(dt.squeeze, (x,), ref=np.squeeze)
    check_rules(lambda a: dt.squeeze(a, (0, -1)), (x,), ref=lambda a: np.squeeze(a, (0, -1)))


@given(shape=shapes(0, 3, 1, 3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_expand_dims(xp, shape, seed, data):
    x = make(xp, shape, seed)
    n_new = data.draw(st.integers(1, 2))
    nd = len(shape) + n_new
    axis = tuple(data.draw(st.lists(st.integers(-nd, nd - 1), min_size=n_new, max_size=n_new,
                                    unique_by=lambda a: a % nd)))
    if n_new == 1 and data.draw(st.booleans()):
        axis = axis[0]
    check_rules(lambda a: dt.expand_dims(a, axis), (x,), ref=lambda a: np.expand_dims(a, axis))


# ---------------------------------------------------------------- transpose family

@given(shape=shapes(0, 4, 1, 3), seed=st.integers(0, 2 ** 16), data=st.data(), contiguous=st.booleans())
def test_transpose(xp, shape, seed, data, contiguous):
    x = maybe_noncontig(make(xp, shape, seed), not contiguous)
    perm = data.draw(st.permutations(range(len(shape))))
    if data.draw(st.booleans()):  # negative axes are allowed, as in NumPy
        perm = [p - len(shape) for p in perm]
    perm = tuple(perm)
    check_rules(lambda a: dt.transpose(a, perm), (x,), ref=lambda a: np.transpose(a, perm))
    check_rules(dt.transpose, (x,), ref=np.transpose)


@given(shape=shapes(1, 4, 1, 3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_swapaxes_moveaxis(xp, shape, seed, data):
    x = make(xp, shape, seed)
    nd = len(shape)
    a, b = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    check_rules(lambda v: dt.swapaxes(v, a, b), (x,), ref=lambda v: np.swapaxes(v, a, b))
    m = data.draw(st.integers(1, nd))
    src = tuple(data.draw(st.permutations(range(nd)))[:m])
    dst = tuple(data.draw(st.permutations(range(nd)))[:m])
    check_rules(lambda v: dt.moveaxis(v, src, dst), (x,), ref=lambda v: np.moveaxis(v, src, dst))
    check_rules(lambda v: dt.moveaxis(v, a, b), (x,), ref=lambda v: np.moveaxis(v, a, b))


# ---------------------------------------------------------------- broadcast_to

@given(out=shapes(0, 4, 1, 4), seed=st.integers(0, 2 ** 16), data=st.data())
def test_broadcast_to(xp, out, seed, data):
    n = data.draw(st.integers(0, len(out)))
    src = tuple(1 if data.draw(st.booleans()) else s for s in out[len(out) - n:])
    x = noncontig(make(xp, src, seed)) if data.draw(st.booleans()) else make(xp, src, seed)
    # torch expand: -1 keeps an existing dim
    target = tuple(-1 if i >= len(out) - n and data.draw(st.booleans()) else s for i, s in enumerate(out))
    check_rules(lambda a: dt.broadcast_to(a, target), (x,), ref=lambda a: np.broadcast_to(a, out))


def test_broadcast_to_0d(xp):
    x = make(xp, (), 4)
    check_rules(lambda a: dt.broadcast_to(a, (2, 3)), (x,), ref=lambda a: np.broadcast_to(a, (2, 3)))
    check_rules(lambda a: dt.broadcast_to(a, ()), (x,), ref=lambda a: a)


# ---------------------------------------------------------------- concatenate / stack

@st.composite
def concat_case(draw):
    base = draw(shapes(1, 3, 1, 3))
    axis = draw(st.integers(-len(base), len(base) - 1))
    n = draw(st.integers(1, 3))
    ax = axis % len(base)
    pieces = [base[:ax] + (draw(st.integers(0 if i else 1, 3)),) + base[ax + 1:] for i in range(n)]
    diff = tuple(i for i in range(n) if draw(st.booleans())) or (0,)
    return pieces, axis, diff


@given(case=concat_case(), seed=st.integers(0, 2 ** 16), contiguous=st.booleans())
def test_concatenate(xp, case, seed, contiguous):
    pieces, axis, diff = case
    xs = tuple(maybe_noncontig(make(xp, s, seed + i), not contiguous and i == 0) for i, s in enumerate(pieces))
    check_rules(lambda *a: dt.concatenate(list(a), axis=axis), xs, diff=diff,
                ref=lambda *a: np.concatenate(a, axis=axis))


@given(shape=shapes(0, 3, 1, 3), n=st.integers(1, 3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_stack(xp, shape, n, seed, data):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    diff = tuple(i for i in range(n) if data.draw(st.booleans())) or (n - 1,)
    xs = tuple(make(xp, shape, seed + i) for i in range(n))
    check_rules(lambda *a: dt.stack(a, axis=axis), xs, diff=diff, ref=lambda *a: np.stack(a, axis=axis))


def test_concatenate_stack_constant_and_zero_pieces(xp):
    a = dual(xp, (2, 3), k=3, seed=1)
    z = dt.DualTensor(make(xp, (1, 3), 5), Zero(3, (1, 3), np.float64))
    c = make(xp, (2, 3), 7)
    out = dt.concatenate([a, c, z, [[1.0, 2.0, 3.0]]], axis=0)
    t = to_np(a.tangent)
    np.testing.assert_array_equal(to_np(out.primal),
                                  np.concatenate([to_np(a.primal), to_np(c), to_np(z.primal), [[1, 2, 3]]]))
    np.testing.assert_array_equal(to_np(out.tangent), np.concatenate([t, np.zeros((3, 4, 3))], 1))
    z2 = dt.DualTensor(make(xp, (2, 3), 6), Zero(3, (2, 3), np.float64))
    s = dt.stack([c, a, z2], axis=-1)
    assert s.tangent.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(to_np(s.tangent)[..., 1], t)
    assert not to_np(s.tangent)[..., [0, 2]].any()
    # all-Zero tangents stay symbolic
    zz = dt.concatenate([z, c], axis=0)
    assert isinstance(zz.tangent, Zero) and zz.k == 3


# ---------------------------------------------------------------- split

@given(shape=shapes(1, 3, 1, 6), seed=st.integers(0, 2 ** 16), data=st.data())
def test_split(xp, shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if data.draw(st.booleans()):
        spec = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    else:  # numpy allows unsorted, negative and out-of-range split points
        spec = data.draw(st.lists(st.integers(-n - 1, n + 1), max_size=3))
    x = make(xp, shape, seed)
    parts = dt.split(x, spec, axis=axis)
    expect = np.split(to_np(x), spec, axis=axis)
    assert isinstance(parts, list) and len(parts) == len(expect)
    for j in range(len(expect)):
        check_rules(lambda a: dt.split(a, spec, axis=axis)[j], (x,),
                    ref=lambda a: np.split(a, spec, axis=axis)[j])


# ---------------------------------------------------------------- pad

@given(shape=shapes(0, 3, 1, 4), seed=st.integers(0, 2 ** 16), data=st.data())
def test_pad_constant(xp, shape, seed, data):
    x = make(xp, shape, seed)
    nd = len(shape)
    form = data.draw(st.integers(0, 2))
    if form == 0 or nd == 0:
        pw = data.draw(st.integers(0, 2))
    elif form == 1:
        pw = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    else:
        pw = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(nd))
    value = data.draw(st.sampled_from([0.0, 1.5, -2]))
    check_rules(lambda a: dt.pad(a, pw, value=value), (x,),
                ref=lambda a: np.pad(a, pw, mode="constant", constant_values=value))


@pytest.mark.parametrize("mode", ["edge", "reflect", "symmetric", "wrap"])
@given(shape=shapes(1, 3, 2, 4), seed=st.integers(0, 2 ** 16), data=st.data())
def test_pad_other_modes(xp, mode, shape, seed, data):
    x = make(xp, shape, seed)
    pw = tuple((data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))) for _ in shape)
    check_rules(lambda a: dt.pad(a, pw, mode=mode), (x,), ref=lambda a: np.pad(a, pw, mode=mode))


# ---------------------------------------------------------------- getitem

@st.composite
def basic_key(draw, shape):
    """A random basic index for ``shape``: ints, slices (negative steps too), None and Ellipsis."""
    entries = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "slice", "full"]))
        if kind == "int":
            entries.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.one_of(st.none(), st.integers(-n - 1, n + 1))
            entries.append(slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, -1, -2, 3]))))
        else:
            entries.append(slice(None))
    entries = entries[:draw(st.integers(0, len(entries)))]  # trailing axes may be left out
    if entries and draw(st.booleans()):  # replace a run by an Ellipsis
        i = draw(st.integers(0, len(entries) - 1))
        j = draw(st.integers(i, len(entries)))
        entries[i:j] = [Ellipsis]
    for _ in range(draw(st.integers(0, 2))):
        entries.insert(draw(st.integers(0, len(entries))), None)
    return tuple(entries) if len(entries) != 1 or draw(st.booleans()) else entries[0]


@given(shape=shapes(0, 4, 1, 4), seed=st.integers(0, 2 ** 16), data=st.data(), contiguous=st.booleans())
def test_getitem_basic(xp, shape, seed, data, contiguous):
    x = maybe_noncontig(make(xp, shape, seed), not contiguous)
    key = data.draw(basic_key(shape))
    check_rules(lambda a: dt.getitem(a, key), (x,), ref=lambda a: a[key])


@st.composite
def advanced_key(draw, shape):
    """Integer arrays (broadcasting, repeated, negative) mixed with ints and slices, adjacent or not."""
    bshape = draw(shapes(0, 2, 1, 3))
    entries, n_arr = [], 0
    for n in shape:
        kind = draw(st.sampled_from(["array", "array", "int", "slice", "full"]))
        if kind == "array":
            sub = bshape[draw(st.integers(0, len(bshape))):]
            sub = tuple(1 if draw(st.booleans()) else s for s in sub)
            arr = np.asarray(draw(st.lists(st.integers(-n, n - 1), min_size=int(np.prod(sub)),
                                           max_size=int(np.prod(sub))))).reshape(sub)
            entries.append(arr.tolist() if arr.ndim == 1 and draw(st.booleans()) else arr)
            n_arr += 1
        elif kind == "int":
            entries.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            entries.append(slice(draw(st.integers(-n, n)), None, draw(st.sampled_from([1, -1, 2]))))
        else:
            entries.append(slice(None))
    if n_arr == 0:
        n = shape[0]
        entries[0] = np.asarray(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4)))
    if draw(st.booleans()):
        entries.insert(draw(st.integers(0, len(entries))), None)
    return tuple(entries)


@given(shape=shapes(1, 4, 1, 4), seed=st.integers(0, 2 ** 16), data=st.data())
def test_getitem_advanced(xp, shape, seed, data):
    x = make(xp, shape, seed)
    key = data.draw(advanced_key(shape))
    xkey = tuple(xp.asarray(e) if isinstance(e, np.ndarray) else e for e in key)
    check_rules(lambda a: dt.getitem(a, xkey), (x,), ref=lambda a: a[key])


@given(shape=shapes(1, 3, 1, 4), seed=st.integers(0, 2 ** 16), data=st.data())
def test_getitem_bool_mask(xp, shape, seed, data):
    x = make(xp, shape, seed)
    start = data.draw(st.integers(0, len(shape) - 1))
    stop = data.draw(st.integers(start + 1, len(shape)))
    mask = make(xp, shape[start:stop], seed + 1) > 0
    key = (slice(None),) * start + (mask,)
    if stop < len(shape) and data.draw(st.booleans()):
        key = key + (data.draw(st.integers(0, shape[stop] - 1)),)  # an int after the mask: still adjacent
    npkey = tuple(to_np(e) if hasattr(e, "shape") else e for e in key)
    check_rules(lambda a: dt.getitem(a, key), (x,), ref=lambda a: a[npkey])


NONADJACENT = [  # advanced indices separated by slices/None/Ellipsis: NumPy moves their dims to the front
    ((3, 4, 5), ([0, 1], slice(None), [1, 2])),
    ((3, 4, 5), (0, slice(None), [1, 2])),
    ((3, 4, 5), ([[0], [2]], slice(1, None), [0, 3, 1])),
    ((3, 4, 5), ([2, 2, 0], slice(None, None, -1), 1)),
    ((2, 3, 4, 5), (slice(None), [0, 1], Ellipsis, [0, 1], slice(None))),
    ((2, 3, 4), (slice(None), [0, 2], None, [1, 3])),
    ((2, 3, 4, 5), ([1, 0], slice(None), slice(None), np.array([[4], [0]]))),
    ((3, 4, 5), (np.array([True, False, True]), slice(None), [1, 4])),
]


@pytest.mark.parametrize("shape,key", NONADJACENT)
def test_getitem_nonadjacent_advanced(xp, shape, key):
    x = make(xp, shape, 11)
    xkey = tuple(xp.asarray(e) if isinstance(e, np.ndarray) else e for e in key)
    check_rules(lambda a: dt.getitem(a, xkey), (x,), ref=lambda a: a[key])
    d = dt.dual(x, make(xp, (3, *shape), 12))
    assert_tangent_matches(d[xkey], d, lambda a: a[key])


def test_getitem_repeated_indices_accumulate(xp):
    x = make(xp, (4, 3), 0)
    key = ([0, 0, 2, 0], slice(None))
    check_rules(lambda a: dt.getitem(a, key), (x,), ref=lambda a: a[key])
    _, vjp_fn = dt.vjp(lambda a: a[key], x)
    g = to_np(vjp_fn(xp.ones((4, 3)))[0])
    np.testing.assert_array_equal(g, [[3] * 3, [0] * 3, [1] * 3, [0] * 3])


def test_getitem_0d_results(xp):
    x = make(xp, (5,), 1)
    check_rules(lambda a: dt.getitem(a, 2), (x,), ref=lambda a: a[2])
    check_rules(lambda a: dt.getitem(a, -1), (x,), ref=lambda a: a[-1])
    d = dual(xp, (5,), k=4)
    y = d[3]
    assert y.shape == () and y.tangent.shape == (4,) and hasattr(y.primal, "ndim")
    z = make(xp, (), 2)
    check_rules(lambda a: dt.getitem(a, ()), (z,), ref=lambda a: a[()])
    check_rules(lambda a: dt.getitem(a, None), (z,), ref=lambda a: a[None])
    check_rules(lambda a: dt.getitem(a, Ellipsis), (z,), ref=lambda a: a[...])


def test_views_not_copies():
    """Linear shape ops keep the tangent a view of the input tangent where NumPy can."""
    d = dual(np, (2, 3, 4), k=3)
    for out in (d.reshape(6, 4), d.T, d.permute(1, 0, 2), d[:, 1:, ::-1], d[0, None], d.unsqueeze(1),
                d.expand(5, 2, 3, 4), dt.split(d, 2, axis=-1)[1]):
        assert np.shares_memory(out.tangent, d.tangent)


# ---------------------------------------------------------------- DualTensor methods

def test_methods(xp):
    d = dual(xp, (2, 3, 4), k=3, seed=5)
    cases = [
        (d.reshape(2, -1), lambda a: a.reshape(2, -1)),
        (d.reshape((4, 6)), lambda a: a.reshape(4, 6)),
        (d.T, lambda a: a.T),
        (d.permute(1, 0, 2), lambda a: a.transpose(1, 0, 2)),
        (d.transpose(), lambda a: a.transpose()),
        (d.transpose((2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
        (d.swapaxes(0, -1), lambda a: a.swapaxes(0, -1)),
        (d.flatten(1), lambda a: a.reshape(2, 12)),
        (d.flatten(), lambda a: a.reshape(-1)),
        (d.unsqueeze(0), lambda a: a[None]),
        (d.unsqueeze(-1), lambda a: a[..., None]),
        (d[1, ::-2, [0, 3]], lambda a: a[1, ::-2, [0, 3]]),
        (d[..., 1], lambda a: a[..., 1]),
        (d[[1, 0], :, [2, 2]], lambda a: a[[1, 0], :, [2, 2]]),
    ]
    for out, fn in cases:
        assert_tangent_matches(out, d, fn)
    e = dual(xp, (1, 3, 1), k=2, seed=7)
    assert_tangent_matches(e.squeeze(), e, np.squeeze)
    assert_tangent_matches(e.squeeze(0), e, lambda a: a.squeeze(0))
    assert_tangent_matches(e.expand(2, -1, 4), e, lambda a: np.broadcast_to(a, (2, 3, 4)))
    assert_tangent_matches(e.expand((5, 2, 1, 3, 2)), e, lambda a: np.broadcast_to(a, (5, 2, 1, 3, 2)))


def test_traced_methods_reverse_mode(xp):
    x = make(xp, (2, 3, 4), 3)

    def f(a):
        y = a.reshape(6, 4).T[1:, [0, 0, 5]]  # methods shared with NumPy (check_rules also runs plain arrays)
        y = dt.concatenate([y, dt.flatten(a, 1)[:, :3]], axis=0) * 2.0
        return dt.expand_dims(y, 0).squeeze().swapaxes(0, 1)

    check_rules(f, (x,))


def test_float32_stays_float32(xp):
    d = dual(xp, (2, 3), k=2, dtype=np.float32)
    z = dt.DualTensor(xp.ones((2, 3), np.float32), Zero(2, (2, 3), np.float32))
    outs = [d.reshape(-1), d.T, d[[1, 1]], d.expand(4, 2, 3), dt.concatenate([d, z], 1), dt.stack([z, d]),
            dt.pad(d, 1, value=3.0), dt.pad(d, 2, mode="reflect"), dt.split(d, 3, axis=1)[0], d.flatten()]
    for y in outs:
        assert y.primal.dtype == np.float32 and y.tangent.dtype == np.float32, y


# ---------------------------------------------------------------- bad input

def test_errors(xp):
    d = dual(xp, (2, 3), k=2)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape array of shape \(2, 3\) \(size 6\) "
                                         r"into shape \(4, 2\)"):
        dt.reshape(d, (4, 2))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape array of shape \(2, 3\).*\(4, -1\)"):
        d.reshape(4, -1)
    with pytest.raises(ValueError, match="at most one -1"):
        d.reshape(-1, -1)
    with pytest.raises(ValueError, match=r"concatenate: input shapes \[\(2, 3\), \(2, 4\)\] differ outside "
                                         r"the concatenation axis 0"):
        dt.concatenate([d, xp.ones((2, 4))], axis=0)
    with pytest.raises(ValueError, match="same number"):
        dt.concatenate([d, xp.ones(3)])
    with pytest.raises(ValueError, match="need at least one"):
        dt.concatenate([])
    with pytest.raises(TypeError, match="list or tuple"):
        dt.concatenate(d)
    with pytest.raises(ValueError, match=r"concatenate: operands carry different numbers of tangents"):
        dt.concatenate([d, dual(xp, (2, 3), k=3)])
    with pytest.raises(ValueError, match=r"stack: all inputs must have the same shape"):
        dt.stack([d, xp.ones((3, 2))])
    with pytest.raises(TypeError, match=r"getitem: .*differentiable value DualTensor"):
        d[dual(xp, (2,), k=2)]
    with pytest.raises(TypeError, match=r"getitem: index arrays must have an integer or boolean dtype"):
        d[xp.asarray([0.0, 1.0])]
    with pytest.raises(IndexError, match=r"getitem: .*shape \(2, 3\)"):
        d[5]
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 0\) are not a permutation"):
        d.transpose(0, 0)
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(2, 3\) to \(4, 3\)"):
        d.expand(4, 3)
    with pytest.raises(ValueError, match=r"broadcast_to: -1 .* only allowed for existing"):
        d.expand(-1, 2, 3)
    with pytest.raises(ValueError, match=r"squeeze: cannot squeeze axis 1 of size 3"):
        d.squeeze(1)
    with pytest.raises(ValueError, match=r"swapaxes: axis 2 is out of bounds for an array of shape \(2, 3\)"):
        d.swapaxes(0, 2)
    with pytest.raises(ValueError, match=r"split: axis 1 of size 3 .* cannot be divided into 2 equal"):
        dt.split(d, 2, axis=1)
    with pytest.raises(ValueError, match=r"pad: mode must be one of"):
        dt.pad(d, 1, mode="circular")
    with pytest.raises(ValueError, match=r"pad: pad_width .* negative"):
        dt.pad(d, -1)
    with pytest.raises(ValueError, match=r"pad: pad_width"):
        dt.pad(d, ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(TypeError, match=r"pad: value must be"):
        dt.pad(d, 1, value=d)
    with pytest.raises(ValueError, match=r"flatten: start_dim 1 comes after end_dim 0"):
        dt.flatten(d, 1, 0)
