"""Primitives and their dispatch: plain arrays, forward mode (DualTensor) or the reverse tape (Traced).

A primitive is defined by its primal ``impl`` and rules written against ``xp``:

* ``jvp(tangents, ans, *args, **params)`` -> output tangent stack, where ``tangents[i]`` is the
  ``(k, *args[i].shape)`` stack or ``None`` (constant / symbolic zero); or per-argument linear
  maps ``jvps[i](t_i, ans, *args, **params)`` whose non-zero terms are summed.
* ``vjp(g, ans, *args, **params)`` -> one cotangent (or None) per positional argument; or
  per-argument maps ``vjps[i](g, ans, *args, **params)``, called only where a gradient is needed.

With ``elementwise=True`` inputs broadcast NumPy-style: tangents are lifted to the output rank
(k stays in front), and cotangents are summed back to each input's shape; the operands' dtypes
combine by PyTorch's rule (:func:`result_dtype`), so a float32 array stays float32 next to a NumPy
float64 scalar, a 0-d float64 array or an integer array. :func:`elementwise` declares such a
primitive from its partial derivatives, once for both rules.
With ``has_aux=True`` the impl returns ``(out, saved)``; rules receive that pair as ``ans`` (so
they reuse primal intermediates) and the caller receives ``(out, saved)``; an optional ``plain_impl``
serves calls on plain arrays, where no rule runs: the same ``out`` (bit for bit) with ``saved`` holding
only what callers read (None in place of what only the rules need).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Sequence

import numpy as np

from .backend import get_default_dtype, get_xp
from .tensor import DualTensor, Node, Traced, Zero, describe


def lift(t: Any, ndim: int) -> Any:
    """Insert size-1 axes after the tangent axis so a (k, *s) stack aligns with rank-``ndim`` data."""
    extra = ndim - (t.ndim - 1)
    return t.reshape(t.shape[:1] + (1,) * extra + t.shape[1:]) if extra > 0 else t


def sum_to(g: Any, shape: tuple) -> Any:
    """Sum a broadcast cotangent back down to ``shape`` (the adjoint of broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    out = g.sum(axis=axes, keepdims=True)
    return out.reshape(shape)


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}  # bool < integer < floating < complex


def result_dtype(values: Sequence[Any]) -> np.dtype | None:
    """The dtype PyTorch gives an elementwise operation on ``values`` (arrays, DualTensor primals,
    NumPy or Python scalars): dimensioned arrays decide; a 0-d array or NumPy scalar counts only
    when its category (bool < integer < floating < complex) is higher, a Python number only when its
    category is higher still (then the default float dtype). None when nothing has a dtype."""
    ranks: list[list[np.dtype]] = [[], [], []]  # dimensioned, 0-d, Python numbers
    for v in values:
        if v is None:
            continue
        if type(v) in (bool, int, float, complex):  # Python numbers (np.float64 subclasses float)
            ranks[2].append(np.dtype(bool if isinstance(v, bool) else int if isinstance(v, int) else
                                     get_default_dtype() if isinstance(v, float) else np.complex64))
        elif hasattr(v, "dtype"):
            ranks[0 if getattr(v, "ndim", 0) > 0 else 1].append(np.dtype(v.dtype))
    out, category = None, -1
    for group in ranks:
        top = max((_CATEGORY[d.kind] for d in group), default=-1)
        if top > category:
            out, category = np.result_type(*[d for d in group if _CATEGORY[d.kind] == top]), top
    return out


def _promoted(prim: "Primitive", values: list) -> list:
    """An elementwise primitive's operands (primals or constants) cast to its result dtype
    (:func:`result_dtype`; lists count as arrays, of the default float dtype when they hold floats)."""
    idx = prim.promoted(len(values))
    out = list(values)
    lists = [i for i in idx if isinstance(out[i], (list, tuple))]
    if lists:
        xp = get_xp(*[v for v in out if hasattr(v, "shape")])
        for i in lists:
            a = xp.asarray(out[i])
            out[i] = a.astype(get_default_dtype()) if a.dtype.kind == "f" else a
    dtype = result_dtype([out[i] for i in idx])
    if dtype is None:
        return out
    if prim.floating and dtype.kind in "biu":  # true division of integers gives the default float
        dtype = np.dtype(get_default_dtype())
    for i in idx:
        a = out[i]
        if a is not None and getattr(a, "dtype", None) != dtype:
            out[i] = a.astype(dtype) if hasattr(a, "astype") else dtype.type(a)
    return out


#: every primitive by name (a name belongs to one primitive)
PRIMITIVES: dict[str, "Primitive"] = {}
_observers: list[Callable] = []


@contextlib.contextmanager
def observe(callback: Callable[["Primitive", tuple, dict, Any], None]) -> Iterator[None]:
    """Within the block, ``callback(prim, args, params, ans)`` runs after every primitive's primal
    computation (plain, forward or reverse mode; ``args`` are the primal arrays, ``ans`` the impl's
    result, or the ``plain_impl``'s for plain arrays, whose aux may hold None): e.g. to count the
    multiply-adds of a forward pass, or to list the operations it runs."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


def _impl(prim: "Primitive", args: Sequence[Any], params: dict, plain: bool = False) -> Any:
    ans = (prim.plain_impl if plain and prim.plain_impl is not None else prim.impl)(*args, **params)
    for callback in _observers:
        callback(prim, tuple(args), params, ans)
    return ans


class Primitive:
    """A differentiable operation with a primal impl and JVP/VJP rules (see the module docstring).
    ``promote``: the argument indices whose dtypes combine for an elementwise primitive (default:
    all of them); ``floating``: its result is floating even for integer operands (true division)."""

    def __init__(self, name: str, impl: Callable, *, jvp: Callable | None = None,
                 jvps: Sequence[Callable | None] | None = None, vjp: Callable | None = None,
                 vjps: Sequence[Callable | None] | None = None, elementwise: bool = False,
                 has_aux: bool = False, nondiff: Sequence[int] = (), promote: Sequence[int] | None = None,
                 floating: bool = False, plain_impl: Callable | None = None):
        self.name, self.impl = name, impl
        self.plain_impl = plain_impl  # the primal for plain arrays (no rule runs): see the module docstring
        self.jvp_rule, self.jvps = jvp, jvps
        self.vjp_rule, self.vjps = vjp, vjps
        self.elementwise, self.has_aux, self.nondiff = elementwise, has_aux, frozenset(nondiff)
        self._promote = None if promote is None else tuple(promote)
        self.floating = floating  # an elementwise result that is floating even for integer operands
        if name in PRIMITIVES:
            raise ValueError(f"Primitive: the name {name!r} is taken")
        PRIMITIVES[name] = self

    def promoted(self, n: int) -> Sequence[int]:
        """The indices of the ``n`` arguments whose dtypes combine."""
        return range(n) if self._promote is None else self._promote

    def __call__(self, *args: Any, **params: Any) -> Any:
        return bind(self, args, params)

    def __repr__(self) -> str:
        return f"Primitive({self.name})"


_SCALARS = (int, float, bool, np.ndarray, np.generic)


def _classify(prim: Primitive, args: tuple) -> tuple[list, int]:
    """Unwrap parameter-like objects; return (args, mode): bit 1 = some DualTensor, bit 2 = some Traced."""
    mode = 0
    out = list(args)
    for i, a in enumerate(out):
        t = type(a)
        if t is DualTensor:
            mode |= 1
        elif t is Traced:
            mode |= 2
        elif a is None or isinstance(a, _SCALARS):
            continue
        elif hasattr(a, "__dt_value__"):  # e.g. nn.Parameter, possibly substituted by a dual/traced value
            out[i] = a = a.__dt_value__()
            mode |= 1 if type(a) is DualTensor else 2 if type(a) is Traced else 0
        else:
            continue
        if i in prim.nondiff and type(a) in (DualTensor, Traced):
            raise TypeError(f"{prim.name}: argument {i} is not differentiable, got {describe(a)}")
    return out, mode


def bind(prim: Primitive, args: tuple, params: dict) -> Any:
    """Apply ``prim`` to ``args``, propagating tangents or recording on the tape as needed."""
    args, mode = _classify(prim, args)
    if mode == 0:
        return _impl(prim, _promoted(prim, args) if prim.elementwise else args, params, plain=True)
    if mode == 2:
        return _bind_traced(prim, args, params)
    return _bind_dual(prim, args, params)


def _bind_dual(prim: Primitive, args: list, params: dict) -> Any:
    """Forward mode. Traced arguments are constants for the tangents, but the primal computation
    is then also recorded on their tape (the result's ``trace``), for block-local VJPs."""
    primals = [a.primal if type(a) is DualTensor else a.value if type(a) is Traced else a for a in args]
    get_xp(*primals, op=prim.name)
    if prim.elementwise:
        primals = _promoted(prim, primals)
    ks = {a.k for a in args if type(a) is DualTensor}
    if len(ks) > 1:
        shapes = ", ".join(f"{a.shape} with k={a.k}" for a in args if type(a) is DualTensor)
        raise ValueError(f"{prim.name}: operands carry different numbers of tangents ({shapes}); "
                         "all DualTensor inputs of one operation must share k")
    k = ks.pop()
    ans = _impl(prim, primals, params)
    out = ans[0] if prim.has_aux else ans
    tangents = [a.tangent if type(a) is DualTensor and type(a.tangent) is not Zero else None for a in args]
    if all(t is None for t in tangents):
        t_out = None
    elif prim.jvps is not None:
        t_out = None
        for i, t in enumerate(tangents):
            if t is None:
                continue
            if prim.elementwise:
                t = lift(t, out.ndim)
            term = prim.jvps[i](t, ans, *primals, **params)
            t_out = term if t_out is None else t_out + term
    else:
        t_out = prim.jvp_rule(tangents, ans, *primals, **params)
    if t_out is None:
        res = DualTensor(out, Zero(k, out.shape, out.dtype))
    else:
        want = (k, *out.shape)
        if t_out.shape != want:
            if not prim.elementwise:
                raise RuntimeError(f"{prim.name}: JVP rule returned tangent shape {t_out.shape}, expected {want}")
            t_out = get_xp(t_out).broadcast_to(t_out, want)
        if t_out.dtype != out.dtype:
            t_out = t_out.astype(out.dtype)
        res = DualTensor.__new__(DualTensor)
        res.primal, res.tangent, res.trace = out, t_out, None
    parents = tuple((i, a) if type(a) is Traced else (i, a.trace) for i, a in enumerate(args)
                    if type(a) is Traced or (type(a) is DualTensor and a.trace is not None))
    if parents:
        res.trace = Traced(out, Node(prim, primals, params, ans, parents))
    return (res, ans[1]) if prim.has_aux else res


def _bind_traced(prim: Primitive, args: list, params: dict) -> Any:
    values = [a.value if type(a) is Traced else a for a in args]
    get_xp(*values, op=prim.name)
    if prim.elementwise:
        values = _promoted(prim, values)
    ans = _impl(prim, values, params)
    out = ans[0] if prim.has_aux else ans
    parents = tuple((i, a) for i, a in enumerate(args) if type(a) is Traced)
    res = Traced(out, Node(prim, values, params, ans, parents))
    return (res, ans[1]) if prim.has_aux else res


def elementwise(name: str, impl: Callable, partials: Sequence[Any], *, nondiff: Sequence[int] = (),
                promote: Sequence[int] | None = None, floating: bool = False) -> Primitive:
    """An elementwise primitive from its partial derivatives, each declared once for both rules.

    ``partials[i]`` gives ∂out/∂x_i: a function ``(ans, *args, **params)``, or the constant 1 or -1,
    or None for a constant argument. The JVP multiplies it into the tangent and the VJP into the
    cotangent (for a select such as ``where``, pass ``linear=True`` maps instead: see :func:`linear`).
    """
    rules = [_partial_rule(d) for d in partials]
    return Primitive(name, impl, elementwise=True, jvps=rules, vjps=rules, nondiff=nondiff, promote=promote,
                     floating=floating)


class linear:
    """Mark an elementwise partial that is not a factor but a linear map ``(v, ans, *args)`` applied
    to the tangent and cotangent alike (``where``'s selection)."""

    def __init__(self, fn: Callable):
        self.fn = fn


def _partial_rule(d: Any) -> Callable | None:
    if d is None:
        return None
    if isinstance(d, linear):
        return d.fn
    if d == 1 and not callable(d):
        return lambda v, ans, *args, **params: v
    if d == -1 and not callable(d):
        return lambda v, ans, *args, **params: -v
    return lambda v, ans, *args, **params: v * d(ans, *args, **params)


def vjp_of_node(node: Node, g: Any) -> list[tuple[Any, Any]]:
    """Cotangents ``[(parent, ct), ...]`` of one tape node given its output cotangent ``g``."""
    prim, args, params, ans = node.prim, node.args, node.params, node.ans
    if prim.vjps is not None:
        cts = [(p, prim.vjps[i](g, ans, *args, **params)) for i, p in node.parents]
    else:
        allc = prim.vjp_rule(g, ans, *args, **params)
        cts = [(p, allc[i]) for i, p in node.parents]
    res = []
    for p, ct in cts:
        if ct is None:
            continue
        if prim.elementwise:
            ct = sum_to(ct, p.value.shape)
        elif ct.shape != p.value.shape:
            raise RuntimeError(f"{prim.name}: VJP rule returned cotangent shape {ct.shape}, expected {p.value.shape}")
        if ct.dtype != p.value.dtype:
            ct = ct.astype(p.value.dtype)
        res.append((p, ct))
    return res
