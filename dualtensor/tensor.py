"""DualTensor (primal + stacked tangents), the symbolic Zero, and reverse-mode Traced values.

Both value types share one operator mixin; every operator delegates to a primitive in
``dualtensor.ops`` (installed there as ``_ops`` to avoid an import cycle).
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .backend import get_default_dtype, get_xp, is_cupy

_ops: Any = None  # set by dualtensor.ops on import


def describe(a: Any) -> str:
    """``Type(shape=..., dtype=...)`` of a value, for error messages."""
    return f"{type(a).__name__}(shape={getattr(a, 'shape', ())}, dtype={getattr(a, 'dtype', type(a).__name__)})"


def _as_float_array(x: Any, what: str) -> Any:
    """Array-ify ``x`` (keeping cupy arrays on the GPU) and insist on a floating dtype."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = np.asarray(x)
        if x.dtype.kind in "iub":  # a Python number or list: use the default float type
            x = x.astype(get_default_dtype())
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: differentiable values must have a floating dtype, got {describe(x)}; "
                        "cast integer/boolean data with .astype(float32/float64) or pass it as a constant")
    return x


class Zero:
    """A symbolic all-zero tangent stack of shape ``(k, *shape)``: no memory, and rules skip it."""

    __slots__ = ("k", "shape", "dtype")

    def __init__(self, k: int, shape: tuple, dtype: Any):
        self.k, self.shape, self.dtype = k, tuple(shape), np.dtype(dtype)

    def materialize(self, xp: Any = np) -> Any:
        """A real zero array of shape ``(k, *shape)``."""
        return xp.zeros((self.k, *self.shape), dtype=self.dtype)

    def __repr__(self) -> str:
        return f"Zero(k={self.k}, shape={self.shape}, dtype={self.dtype})"


class TensorOps:
    """Operators and array-like methods shared by DualTensor and Traced."""

    __slots__ = ()
    __array_ufunc__ = None  # make numpy defer to our reflected operators
    __array_priority__ = 1000

    # arithmetic
    def __add__(self, o): return _ops.add(self, o)
    def __radd__(self, o): return _ops.add(o, self)
    def __sub__(self, o): return _ops.subtract(self, o)
    def __rsub__(self, o): return _ops.subtract(o, self)
    def __mul__(self, o): return _ops.multiply(self, o)
    def __rmul__(self, o): return _ops.multiply(o, self)
    def __truediv__(self, o): return _ops.divide(self, o)
    def __rtruediv__(self, o): return _ops.divide(o, self)
    def __pow__(self, o): return _ops.power(self, o)
    def __rpow__(self, o): return _ops.power(o, self)
    def __matmul__(self, o): return _ops.matmul(self, o)
    def __rmatmul__(self, o): return _ops.matmul(o, self)
    def __neg__(self): return _ops.negative(self)
    def __pos__(self): return self
    def __abs__(self): return _ops.abs(self)
    def __getitem__(self, key): return _ops.getitem(self, key)

    # comparisons are not differentiable: they return plain boolean arrays of the primal
    def __lt__(self, o): return self._value() < _ops.primal_of(o)
    def __le__(self, o): return self._value() <= _ops.primal_of(o)
    def __gt__(self, o): return self._value() > _ops.primal_of(o)
    def __ge__(self, o): return self._value() >= _ops.primal_of(o)
    def __eq__(self, o): return self._value() == _ops.primal_of(o)
    def __ne__(self, o): return self._value() != _ops.primal_of(o)
    __hash__ = object.__hash__

    def __len__(self) -> int:
        return self.shape[0]

    def __bool__(self):
        raise TypeError(f"the truth value of a {type(self).__name__} is ambiguous; compare its .primal")

    @property
    def shape(self) -> tuple: return self._value().shape
    @property
    def ndim(self) -> int: return self._value().ndim
    @property
    def size(self) -> int: return self._value().size
    @property
    def dtype(self): return self._value().dtype
    @property
    def T(self): return _ops.transpose(self)

    # shape methods
    def reshape(self, *shape): return _ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, *axes): return _ops.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))
    def permute(self, *axes): return self.transpose(*axes)
    def swapaxes(self, a, b): return _ops.swapaxes(self, a, b)
    def expand(self, *shape): return _ops.broadcast_to(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def flatten(self, start_dim: int = 0): return _ops.flatten(self, start_dim)
    def squeeze(self, axis=None): return _ops.squeeze(self, axis)
    def unsqueeze(self, axis): return _ops.expand_dims(self, axis)

    # reductions
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return _ops.var(self, axis, keepdims, ddof)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return _ops.min(self, axis, keepdims)

    # elementwise
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def clip(self, lo=None, hi=None): return _ops.clip(self, lo, hi)


class DualTensor(TensorOps):
    """A primal array of shape S carried together with k tangents stacked as ``(k, *S)``.

    ``tangent`` may be the symbolic :class:`Zero`. Every operation computes the primal once
    and all k tangents together; the k axis never broadcasts against data axes.
    When an operation also involves reverse-mode ``Traced`` values (e.g. parameters in activity
    perturbation), the primal computation is recorded on the tape too and ``trace`` holds the
    Traced twin of the primal; tangents treat Traced values as constants.
    """

    __slots__ = ("primal", "tangent", "trace")

    def __init__(self, primal: Any, tangent: Any, k: int | None = None):
        primal = _as_float_array(primal, "DualTensor")
        if tangent is None or isinstance(tangent, Zero):
            kk = tangent.k if isinstance(tangent, Zero) else k
            if kk is None:
                raise ValueError("DualTensor: a zero tangent needs k (pass k=... or a Zero(k, shape, dtype))")
            tangent = Zero(kk, primal.shape, primal.dtype)
        else:
            if not hasattr(tangent, "shape"):
                tangent = np.asarray(tangent)
            if tangent.shape[1:] != primal.shape or tangent.ndim != primal.ndim + 1:
                raise ValueError(f"DualTensor: tangent must have shape (k, *primal.shape) = (k, {', '.join(map(str, primal.shape))}"
                                 f"{',' if primal.ndim == 1 else ''}), got tangent shape {tangent.shape} for primal shape {primal.shape}")
            get_xp(primal, tangent, op="DualTensor")
            if tangent.dtype != primal.dtype:
                if tangent.dtype.kind not in "fiu":
                    raise TypeError(f"DualTensor: tangent dtype {tangent.dtype} is not numeric")
                tangent = tangent.astype(primal.dtype)
        if (tangent.k if isinstance(tangent, Zero) else tangent.shape[0]) < 1:
            raise ValueError(f"DualTensor: k = 0 tangents for primal shape {primal.shape}; a DualTensor carries "
                             "at least one tangent (k >= 1)")
        self.primal = primal
        self.tangent = tangent
        self.trace = None  # a Traced twin when the primal is also recorded on a reverse-mode tape

    def _value(self):
        return self.primal

    @property
    def k(self) -> int:
        """Number of stacked tangents."""
        return self.tangent.shape[0] if not isinstance(self.tangent, Zero) else self.tangent.k

    def tangent_array(self) -> Any:
        """The tangent stack as a real array (a Zero is materialised)."""
        if isinstance(self.tangent, Zero):
            return self.tangent.materialize(get_xp(self.primal))
        return self.tangent

    def _map_arrays(self, fn):
        t = self.tangent if isinstance(self.tangent, Zero) else fn(self.tangent)
        return DualTensor(fn(self.primal), t)

    def __repr__(self) -> str:
        dev = "gpu" if is_cupy(self.primal) else "cpu"
        return f"DualTensor(shape={self.shape}, k={self.k}, dtype={self.dtype}, device={dev}{', tangent=Zero' if isinstance(self.tangent, Zero) else ''})"


def primal_of(x: Any) -> Any:
    """The plain array inside a DualTensor/Traced value (or a parameter holding one); constants pass through."""
    t = type(x)
    if t is DualTensor:
        return x.primal
    if t is Traced:
        return x.value
    return primal_of(x.__dt_value__()) if hasattr(x, "__dt_value__") else x


def dual(x: Any, tangent: Any) -> DualTensor:
    """Make a DualTensor from a primal and a tangent stack of shape ``(k, *x.shape)``."""
    return DualTensor(x, tangent)


_node_ids = itertools.count()


class Node:
    """One recorded primitive application on the reverse-mode tape."""

    __slots__ = ("prim", "args", "params", "ans", "parents")

    def __init__(self, prim, args, params, ans, parents):
        self.prim, self.args, self.params, self.ans, self.parents = prim, args, params, ans, parents


class Traced(TensorOps):
    """A value recorded on the reverse-mode tape (used by ``value_and_grad``/``vjp``)."""

    __slots__ = ("value", "node", "id")

    def __init__(self, value: Any, node: Node | None = None):
        self.value = value
        self.node = node
        self.id = next(_node_ids)

    def _value(self):
        return self.value

    def __repr__(self) -> str:
        return f"Traced(shape={self.shape}, dtype={self.dtype})"
