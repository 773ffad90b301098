"""Shape primitives: reshape, transpose, broadcasting, indexing, joining, splitting and padding.

Every one of them is linear, so the JVP applies the same operation to the ``(k, *shape)``
tangent stack with the tangent axis kept in front (data axes shifted by one), and the VJP is
the adjoint (inverse reshape/permutation, sum over broadcast axes, scatter of a slice ...).
Composite helpers (swapaxes, moveaxis, flatten, squeeze, expand_dims, split, non-constant pad)
are built from the primitives, so they need no rules of their own.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

from ..backend import get_xp as _xp, scatter_add
from ..tensor import primal_of as _value
from ..core import Primitive, lift, sum_to
from ..tensor import DualTensor, Traced

__all__ = ["reshape", "transpose", "swapaxes", "moveaxis", "broadcast_to", "flatten", "squeeze",
           "expand_dims", "concatenate", "stack", "split", "pad", "getitem"]


# ---------------------------------------------------------------- helpers

def _shape_of(a: Any) -> tuple:
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def _is_diff(a: Any) -> bool:
    return type(a) in (DualTensor, Traced) or hasattr(a, "__dt_value__")


def _int(op: str, v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {what} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{op}: {what} must be an integer, got {v!r} ({type(v).__name__})") from None


def _axis(op: str, axis: Any, ndim: int, shape: tuple | None = None) -> int:
    """Normalise one axis into range(ndim) or raise naming the op."""
    a = _int(op, axis, "axis")
    if not -ndim <= a < ndim:
        where = f" for an array of shape {shape}" if shape is not None else f" for rank {ndim}"
        raise ValueError(f"{op}: axis {a} is out of bounds{where}")
    return a % ndim


def _shape_arg(op: str, shape: Any) -> tuple:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        return (int(shape),)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{op}: shape must be an int or a sequence of ints, got {shape!r}")
    return tuple(_int(op, s, "shape entry") for s in shape)


# ---------------------------------------------------------------- reshape

def reshape(x: Any, shape: Any) -> Any:
    """Reshape to ``shape`` (one entry may be -1), as numpy.reshape."""
    shape = _shape_arg("reshape", shape)
    xshape = _shape_of(x)
    size = int(np.prod(xshape, dtype=np.int64))
    if sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
        raise ValueError(f"reshape: invalid target shape {shape} (at most one -1, other entries >= 0)")
    known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape array of shape {xshape} (size {size}) into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    elif known != size:
        raise ValueError(f"reshape: cannot reshape array of shape {xshape} (size {size}) into shape {shape} "
                         f"(size {known})")
    return _reshape(x, shape=shape)


_reshape = Primitive("reshape", lambda x, shape: x.reshape(shape),
                     jvp=lambda ts, ans, x, shape: ts[0].reshape((ts[0].shape[0], *ans.shape)),
                     vjp=lambda g, ans, x, shape: (g.reshape(x.shape),))


def flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
    """Merge dims ``start_dim..end_dim`` into one (torch.flatten; a 0-d input becomes shape (1,))."""
    xshape = _shape_of(x)
    if len(xshape) == 0:
        for d in (start_dim, end_dim):
            if _int("flatten", d, "dim") not in (0, -1):
                raise ValueError(f"flatten: dim {d} is out of range for a 0-d input")
        return _reshape(x, shape=(1,))
    s = _axis("flatten", start_dim, len(xshape), xshape)
    e = _axis("flatten", end_dim, len(xshape), xshape)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {xshape}")
    merged = int(np.prod(xshape[s:e + 1], dtype=np.int64))
    return _reshape(x, shape=xshape[:s] + (merged,) + xshape[e + 1:])


def squeeze(x: Any, axis: Any = None) -> Any:
    """Remove size-1 axes (all, or the given ones, which must have size 1), as numpy.squeeze."""
    xshape = _shape_of(x)
    if axis is None:
        drop = {i for i, s in enumerate(xshape) if s == 1}
    else:
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        drop = {_axis("squeeze", a, len(xshape), xshape) for a in axes}
        if len(drop) != len(axes):
            raise ValueError(f"squeeze: repeated axis in {axis!r}")
        bad = [a for a in sorted(drop) if xshape[a] != 1]
        if bad:
            raise ValueError(f"squeeze: cannot squeeze axis {bad[0]} of size {xshape[bad[0]]} "
                             f"(only size-1 axes; input shape {xshape})")
    return _reshape(x, shape=tuple(s for i, s in enumerate(xshape) if i not in drop))


def expand_dims(x: Any, axis: Any) -> Any:
    """Insert size-1 axes at the given positions of the result, as numpy.expand_dims."""
    xshape = _shape_of(x)
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    nd = len(xshape) + len(axes)
    new = {_axis("expand_dims", a, nd) for a in axes}
    if len(new) != len(axes):
        raise ValueError(f"expand_dims: repeated axis in {axis!r}")
    it = iter(xshape)
    return _reshape(x, shape=tuple(1 if i in new else next(it) for i in range(nd)))


# ---------------------------------------------------------------- transpose

def transpose(x: Any, axes: Any = None) -> Any:
    """Permute axes (reverse them when ``axes`` is None), as numpy.transpose."""
    xshape = _shape_of(x)
    nd = len(xshape)
    if axes is None:
        perm = tuple(range(nd - 1, -1, -1))
    else:
        if not isinstance(axes, (tuple, list)):
            raise TypeError(f"transpose: axes must be a sequence of ints or None, got {axes!r}")
        if len(axes) != nd:
            raise ValueError(f"transpose: axes {tuple(axes)} do not match an array of shape {xshape}")
        perm = tuple(_axis("transpose", a, nd, xshape) for a in axes)
        if sorted(perm) != list(range(nd)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the axes of shape {xshape}")
    return _transpose(x, axes=perm)


def _transpose_jvp(ts, ans, x, axes):
    return ts[0].transpose((0,) + tuple(a + 1 for a in axes))


def _transpose_vjp(g, ans, x, axes):
    return (g.transpose(tuple(int(i) for i in np.argsort(axes))),)


_transpose = Primitive("transpose", lambda x, axes: x.transpose(axes), jvp=_transpose_jvp, vjp=_transpose_vjp)


def swapaxes(x: Any, axis1: int, axis2: int) -> Any:
    """Exchange two axes, as numpy.swapaxes."""
    xshape = _shape_of(x)
    a, b = _axis("swapaxes", axis1, len(xshape), xshape), _axis("swapaxes", axis2, len(xshape), xshape)
    perm = list(range(len(xshape)))
    perm[a], perm[b] = b, a
    return _transpose(x, axes=tuple(perm))


def moveaxis(x: Any, source: Any, destination: Any) -> Any:
    """Move axes to new positions (others keep their order), as numpy.moveaxis."""
    xshape = _shape_of(x)
    nd = len(xshape)
    src = source if isinstance(source, (tuple, list)) else (source,)
    dst = destination if isinstance(destination, (tuple, list)) else (destination,)
    if len(src) != len(dst):
        raise ValueError(f"moveaxis: source {source!r} and destination {destination!r} differ in length")
    src = [_axis("moveaxis", a, nd, xshape) for a in src]
    dst = [_axis("moveaxis", a, nd, xshape) for a in dst]
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise ValueError(f"moveaxis: repeated axis in source {source!r} or destination {destination!r}")
    order = [i for i in range(nd) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return _transpose(x, axes=tuple(order))


# ---------------------------------------------------------------- broadcast_to

def broadcast_to(x: Any, shape: Any) -> Any:
    """Broadcast to ``shape`` (numpy.broadcast_to; a -1 keeps that existing dim, as torch expand)."""
    shape = _shape_arg("broadcast_to", shape)
    xshape = _shape_of(x)
    lead = len(shape) - len(xshape)
    if lead < 0:
        raise ValueError(f"broadcast_to: cannot broadcast shape {xshape} to fewer dimensions {shape}")
    out = []
    for i, s in enumerate(shape):
        if s == -1:
            if i < lead:
                raise ValueError(f"broadcast_to: -1 in {shape} is only allowed for existing dimensions "
                                 f"of the input shape {xshape}")
            s = xshape[i - lead]
        elif s < 0:
            raise ValueError(f"broadcast_to: negative size in target shape {shape}")
        if i >= lead and xshape[i - lead] not in (1, s):
            raise ValueError(f"broadcast_to: cannot broadcast shape {xshape} to {shape} "
                             f"(dim {i} has size {xshape[i - lead]}, not 1 or {s})")
        out.append(s)
    return _broadcast_to(x, shape=tuple(out))


def _broadcast_to_jvp(ts, ans, x, shape):
    t = ts[0]
    return _xp(t).broadcast_to(lift(t, len(shape)), (t.shape[0], *shape))


_broadcast_to = Primitive("broadcast_to", lambda x, shape: _xp(x).broadcast_to(x, shape),
                          jvp=_broadcast_to_jvp, vjp=lambda g, ans, x, shape: (sum_to(g, x.shape),))


# ---------------------------------------------------------------- concatenate / stack

def _pieces(op: str, xs: Any) -> list:
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"{op}: expected a list or tuple of arrays, got {type(xs).__name__}")
    if len(xs) == 0:
        raise ValueError(f"{op}: need at least one array")
    xp = _xp(*[_value(a) for a in xs], op=op)
    # plain constants (lists, scalars) become arrays of the common array module
    return [a if _is_diff(a) or hasattr(a, "shape") else xp.asarray(a) for a in xs]


def concatenate(xs: Sequence[Any], axis: int = 0) -> Any:
    """Join arrays (DualTensors and constants mixed) along an existing axis, as numpy.concatenate."""
    xs = _pieces("concatenate", xs)
    shapes = [_shape_of(a) for a in xs]
    nd = len(shapes[0])
    if nd == 0 or any(len(s) != nd for s in shapes):
        raise ValueError(f"concatenate: all inputs need the same number (>= 1) of dimensions, got shapes {shapes}")
    ax = _axis("concatenate", axis, nd, shapes[0])
    ref = shapes[0][:ax] + shapes[0][ax + 1:]
    if any(s[:ax] + s[ax + 1:] != ref for s in shapes):
        raise ValueError(f"concatenate: input shapes {shapes} differ outside the concatenation axis {ax}")
    return _concatenate(*xs, axis=ax)


def _zero_view(xp, shape, dtype):
    """A read-only all-zero array of ``shape`` that uses no memory (stride 0)."""
    return xp.broadcast_to(xp.zeros((), dtype=dtype), shape)


def _filled(tangents, ans, xs):
    """Tangent pieces with Zero/constant pieces replaced by zero views (no memory)."""
    xp = _xp(ans)
    k = next(t.shape[0] for t in tangents if t is not None)
    return [t if t is not None else _zero_view(xp, (k, *x.shape), ans.dtype) for t, x in zip(tangents, xs)]


def _concatenate_jvp(ts, ans, *xs, axis):
    return _xp(ans).concatenate(_filled(ts, ans, xs), axis=axis + 1)


def _concatenate_vjp(g, ans, *xs, axis):
    out, start = [], 0
    for x in xs:
        stop = start + x.shape[axis]
        out.append(g[(slice(None),) * axis + (slice(start, stop),)])
        start = stop
    return tuple(out)


_concatenate = Primitive("concatenate", lambda *xs, axis: _xp(*xs).concatenate(xs, axis=axis),
                         jvp=_concatenate_jvp, vjp=_concatenate_vjp)


def stack(xs: Sequence[Any], axis: int = 0) -> Any:
    """Join equally shaped arrays along a new axis, as numpy.stack."""
    xs = _pieces("stack", xs)
    shapes = [_shape_of(a) for a in xs]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"stack: all inputs must have the same shape, got shapes {shapes}")
    ax = _axis("stack", axis, len(shapes[0]) + 1)
    return _stack(*xs, axis=ax)


_stack = Primitive("stack", lambda *xs, axis: _xp(*xs).stack(xs, axis=axis),
                   jvp=lambda ts, ans, *xs, axis: _xp(ans).stack(_filled(ts, ans, xs), axis=axis + 1),
                   vjp=lambda g, ans, *xs, axis: tuple(g[(slice(None),) * axis + (i,)] for i in range(len(xs))))


# ---------------------------------------------------------------- getitem

def _is_int(e: Any) -> bool:
    return isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))


def _check_bounds(key: tuple, shape: tuple) -> None:
    """Raise IndexError for an out-of-range integer index array, as NumPy does (CuPy wraps them
    around silently); one device-to-host sync for all of the key's integer arrays."""
    used = sum(e.ndim if getattr(e, "dtype", None) is not None and e.dtype.kind == "b" else 1
               for e in key if e is not None and e is not Ellipsis)
    axis, checks = 0, []
    for e in key:
        if e is Ellipsis:
            axis += len(shape) - used
            continue
        if e is None:
            continue
        if hasattr(e, "dtype") and e.dtype.kind in "iu" and e.size and axis < len(shape):
            i = e.astype(np.int64, copy=False)  # unsigned indices would not compare with -n
            checks.append(((i < -shape[axis]) | (i >= shape[axis])).any())
        axis += e.ndim if hasattr(e, "dtype") and e.dtype.kind == "b" else 1
    if checks and bool(_xp(*checks).stack(checks).any()):
        raise IndexError(f"getitem: an integer index array is out of bounds for shape {shape}")


def _index_key(x: Any, key: Any) -> tuple[tuple, int | None, bool]:
    """Normalise an index; return (key, nb, accumulate).

    ``nb`` is the rank of the broadcast advanced-index block when NumPy moves it to the front of
    the result (advanced indices separated by a slice/None/Ellipsis), else None. ``accumulate``
    says integer index arrays are present (repeated indices must accumulate in the VJP).
    """
    if not isinstance(key, tuple):
        key = (key,)
    xp = _xp(_value(x))
    out = []
    for e in key:
        if type(e) in (DualTensor, Traced) or hasattr(e, "__dt_value__"):
            raise TypeError(f"getitem: indices must be integers, slices, None, Ellipsis or integer/boolean "
                            f"arrays, not a differentiable value {type(e).__name__}(shape={_shape_of(e)}); "
                            "use its .primal (or an integer array) as the index")
        if e is None or e is Ellipsis or isinstance(e, slice):
            out.append(e)
        elif isinstance(e, (bool, np.bool_)):
            raise TypeError(f"getitem: boolean scalar indices ({e!r}) are not supported; use None to add an axis")
        elif _is_int(e):
            out.append(int(e))
        elif isinstance(e, (list, tuple)) or hasattr(e, "dtype"):
            a = xp.asarray(e)
            if a.size == 0 and a.dtype.kind == "f" and not hasattr(e, "dtype"):
                a = a.astype(np.intp)  # an empty list is an empty integer index, as in NumPy
            if a.dtype.kind not in "iub":
                raise TypeError(f"getitem: index arrays must have an integer or boolean dtype, got {a.dtype}")
            if a.dtype.kind == "b" and a.ndim == 0:
                raise TypeError("getitem: 0-d boolean indices are not supported; use None to add an axis")
            out.append(a)
        else:
            raise TypeError(f"getitem: unsupported index {e!r} of type {type(e).__name__} "
                            "(use ints, slices, None, Ellipsis or integer/boolean arrays)")
    key = tuple(out)
    if xp is not np:
        _check_bounds(key, _shape_of(x))
    arrays = [e for e in key if hasattr(e, "ndim") and e.ndim > 0]
    if not arrays:
        return key, None, False
    nb = max(1 if a.dtype.kind == "b" else a.ndim for a in arrays)
    # NumPy: advanced indices (integers count once an array is present) that are not all adjacent put
    # their broadcast dims first; a slice, None or Ellipsis between them breaks adjacency.
    status = 0  # 0: none seen, 1: in the first run, 2: run ended, 3: split
    for e in key:
        fancy = hasattr(e, "ndim") or _is_int(e)
        if fancy:
            status = 1 if status in (0, 1) else 3
        elif status == 1:
            status = 2
    accumulate = any(a.dtype.kind != "b" for a in arrays)
    return key, (nb if status == 3 else None), accumulate


def getitem(x: Any, key: Any) -> Any:
    """x[key]: basic and advanced (integer/boolean array) indexing with NumPy semantics."""
    key, front, accumulate = _index_key(x, key)
    return _getitem(x, key=key, front=front, accumulate=accumulate)


def _getitem_impl(x, key, front, accumulate):
    try:
        out = x[key]
    except IndexError as e:
        raise IndexError(f"getitem: {e} (array shape {x.shape})") from None
    return out if hasattr(out, "ndim") and not isinstance(out, np.generic) else _xp(x).asarray(out)


def _getitem_jvp(ts, ans, x, key, front, accumulate):
    t = ts[0][(slice(None),) + key]
    # the extra leading slice keeps NumPy's placement of the advanced block, except when that block
    # goes to the front: then it lands before the tangent axis, which we move back to position 0
    return _xp(t).moveaxis(t, front, 0) if front is not None else t


def _getitem_vjp(g, ans, x, key, front, accumulate):
    xp = _xp(g)
    gx = xp.zeros(x.shape, dtype=g.dtype)
    if accumulate:
        scatter_add(xp, gx, key, g)  # repeated integer indices accumulate
    else:
        gx[key] = g
    return (gx,)


_getitem = Primitive("getitem", _getitem_impl, jvp=_getitem_jvp, vjp=_getitem_vjp)


# ---------------------------------------------------------------- split

def split(x: Any, indices_or_sections: Any, axis: int = 0) -> list:
    """Split into a list of sub-arrays along ``axis``, as numpy.split (views of the tangents)."""
    xshape = _shape_of(x)
    if len(xshape) == 0:
        raise ValueError("split: cannot split a 0-d array")
    ax = _axis("split", axis, len(xshape), xshape)
    n = xshape[ax]
    if _is_int(indices_or_sections):
        sections = int(indices_or_sections)
        if sections <= 0 or n % sections:
            raise ValueError(f"split: axis {ax} of size {n} (shape {xshape}) cannot be divided into "
                             f"{sections} equal sections")
        points = [i * (n // sections) for i in range(sections + 1)]
    else:
        try:
            idx = [_int("split", i, "split index") for i in indices_or_sections]
        except TypeError:
            raise TypeError(f"split: indices_or_sections must be an int or a sequence of ints, "
                            f"got {indices_or_sections!r}") from None
        points = [0] + idx + [n]
    pre = (slice(None),) * ax
    return [getitem(x, pre + (slice(a, b),)) for a, b in zip(points[:-1], points[1:])]


# ---------------------------------------------------------------- pad

_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _pad_width(op: str, pad_width: Any, xshape: tuple) -> tuple:
    nd = len(xshape)
    try:
        pw = np.asarray(pad_width)
        if pw.dtype.kind not in "iu" and pw.size:
            raise TypeError
        pw = np.broadcast_to(pw.astype(np.int64), (nd, 2))
    except (TypeError, ValueError):
        raise ValueError(f"{op}: pad_width {pad_width!r} is not an int, a (before, after) pair or one pair "
                         f"per axis for an input of shape {xshape}") from None
    if (pw < 0).any():
        raise ValueError(f"{op}: pad_width {pad_width!r} has negative entries")
    return tuple((int(a), int(b)) for a, b in pw)


def pad(x: Any, pad_width: Any, mode: str = "constant", value: float = 0.0) -> Any:
    """Pad with numpy.pad's pad_width conventions; modes constant (fill ``value``), edge, reflect,
    symmetric, wrap."""
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {_PAD_MODES}, got {mode!r}")
    xshape = _shape_of(x)
    pw = _pad_width("pad", pad_width, xshape)
    if not any(b or a for b, a in pw):  # nothing to pad (also every 0-d input): identity
        return _reshape(x, shape=xshape)
    if mode == "constant":
        if _is_diff(value) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"pad: value must be a Python/NumPy number (a constant), got {type(value).__name__}")
        return _pad(x, pad_width=pw, value=value)
    # the other modes are per-axis index maps: gather along each padded axis (VJP = scatter-add)
    for ax, (b, a) in enumerate(pw):
        if b or a:
            if xshape[ax] == 0:
                raise ValueError(f"pad: cannot pad an empty axis {ax} (shape {xshape}) in mode {mode!r}")
            idx = np.pad(np.arange(xshape[ax]), (b, a), mode=mode)
            x = getitem(x, (slice(None),) * ax + (idx,))
    return x


def _pad_impl(x, pad_width, value):
    return _xp(x).pad(x, pad_width, mode="constant", constant_values=value)


def _pad_jvp(ts, ans, x, pad_width, value):
    t = ts[0]
    return _xp(t).pad(t, ((0, 0),) + pad_width, mode="constant", constant_values=0)


def _pad_vjp(g, ans, x, pad_width, value):
    return (g[tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))],)


_pad = Primitive("pad", _pad_impl, jvp=_pad_jvp, vjp=_pad_vjp)
