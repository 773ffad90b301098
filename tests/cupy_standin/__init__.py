"""A CPU stand-in for CuPy, so the CuPy code paths run (and are tested) on machines without a GPU.

``install()`` registers this stand-in as ``cupy`` and ``cupyx`` (with the submodules dualtensor
and its benchmark use). Its arrays wrap NumPy arrays but copy CuPy's observable contract, the
behaviours in which CuPy differs from NumPy:

* an ``ndarray`` is not an ``np.ndarray``; ``np.asarray(x)`` raises TypeError ("Implicit conversion
  to a NumPy array is not allowed"), as does mixing it with an ``np.ndarray`` in one operation;
  NumPy scalars and Python numbers mix in freely;
* only the names real CuPy has exist (``names.json``, made from CuPy by ``make_names.py``): the
  modules' functions, the ndarray's methods, the random Generator's methods (its bit generator has
  no ``state``); NumPy functions called on these arrays dispatch here only for those names;
* results are never NumPy scalars (reductions give 0-d arrays);
* out-of-range integer array indices wrap around (indexing, ``take``, ``cupyx.scatter_add``);
* ``broadcast_to`` views are writable (writing one element changes every broadcast copy);
  ``flags`` has no ``writeable``;
* ``linalg.cholesky`` never raises: a matrix that is not positive definite leaves a factor that is
  only partly computed (finite garbage past the failing pivot), as cuSOLVER's potrf does;
* every device-to-host conversion (``bool``, ``int``, ``float``, ``item``, ``get``, ``tolist``,
  ``asnumpy``, printing) is counted: :func:`host_syncs`, :func:`counting`.
"""
from __future__ import annotations

import contextlib
import json
import threading
import math
import operator
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NAMES: dict = json.loads((Path(__file__).with_name("names.json")).read_text())
MODULE_NAMES: dict[str, set[str]] = {m: set(v) for m, v in NAMES["modules"].items()}
CLASS_NAMES: dict[str, set[str]] = {c: set(v) for c, v in NAMES["classes"].items()}
__version__ = NAMES["cupy_version"] + "+standin"

_syncs = 0


def host_syncs() -> int:
    """Device-to-host conversions so far."""
    return _syncs


@contextlib.contextmanager
def counting() -> Iterator[list[int]]:
    """``with counting() as n:`` ... ``n[0]`` is the number of host syncs inside the block."""
    box = [0]
    start = _syncs
    try:
        yield box
    finally:
        box[0] = _syncs - start


def _sync() -> None:
    global _syncs
    _syncs += 1


# ------------------------------------------------------------------------------------------ wrapping

def _reject(x: Any) -> None:
    raise TypeError(f"Unsupported type {type(x)}")


def _unwrap(x: Any, host_ok: bool = False) -> Any:
    """The NumPy form of an argument: stand-in arrays unwrapped, np.ndarray refused (CuPy refuses
    host arrays) unless ``host_ok``; containers walked."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        if host_ok:
            return x
        _reject(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, host_ok) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, host_ok) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    """Results as stand-in arrays: np.ndarray and NumPy scalars become (0-d) device arrays."""
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    if hasattr(x, "_fields"):  # NamedTuple results (qr, svd, eigh, ...)
        return type(x)(*(_wrap(v) for v in x))
    return x


def _wrap_indices(key: Any, shape: tuple[int, ...]) -> Any:
    """``key`` with out-of-range integer index arrays wrapped around each axis (CuPy's rule)."""
    if isinstance(key, ndarray):
        key = key._a
    parts = list(key) if isinstance(key, tuple) else [key]
    parts = [p._a if isinstance(p, ndarray) else p for p in parts]
    parts = [np.asarray(p) if isinstance(p, list) else p for p in parts]

    def consumed(p: Any) -> int:
        if p is None or p is Ellipsis:
            return 0
        if isinstance(p, np.ndarray) and p.dtype == bool:
            return p.ndim
        return 1

    used = sum(consumed(p) for p in parts)
    axis, out = 0, []
    for p in parts:
        if p is Ellipsis:
            axis += len(shape) - used
        elif isinstance(p, np.ndarray) and p.dtype.kind in "iu" and axis < len(shape) and shape[axis] > 0:
            p = np.mod(p, shape[axis])
        out.append(p)
        axis += consumed(p)
    return tuple(out) if isinstance(key, tuple) else out[0]


class _Flags:
    """CuPy's flags: contiguity and ownership, but no ``writeable``."""

    def __init__(self, a: np.ndarray):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class _Device:
    id = 0

    def __init__(self, device: int = 0):
        self.id = int(device)

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> "_Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


_ARRAY_METHODS = CLASS_NAMES["cupy.ndarray"]


class ndarray:
    """A device array: a NumPy array behind CuPy's interface."""

    __slots__ = ("_a",)
    __array_priority__ = 100.0

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None, order: str = "C"):
        self._a = shape if isinstance(shape, np.ndarray) else np.empty(shape, dtype, order=order)

    # -- attributes -------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: ndarray(self._a.T))
    mT = property(lambda self: ndarray(np.swapaxes(self._a, -1, -2)))
    flags = property(lambda self: _Flags(self._a))
    device = property(lambda self: _Device())
    base = property(lambda self: None if self._a.base is None else ndarray(self._a.base))

    @property
    def real(self) -> "ndarray":
        return ndarray(self._a.real)

    @property
    def imag(self) -> "ndarray":
        return ndarray(self._a.imag)

    def __getattr__(self, name: str) -> Any:
        if name in _ARRAY_METHODS and hasattr(np.ndarray, name) and not name.startswith("_"):
            method = getattr(self._a, name)
            return lambda *args, **kw: _call_out(method, args, kw)
        raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")

    # -- host transfers (each counted) --------------------------------------------------------
    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        _sync()
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        self._a[...] = arr

    def item(self, *args: Any) -> Any:
        _sync()
        return self._a.item(*args)

    def tolist(self) -> Any:
        _sync()
        return self._a.tolist()

    def __bool__(self) -> bool:
        _sync()
        return bool(self._a)

    def __int__(self) -> int:
        _sync()
        return int(self._a)

    def __float__(self) -> float:
        _sync()
        return float(self._a)

    def __complex__(self) -> complex:
        _sync()
        return complex(self._a)

    def __index__(self) -> int:
        _sync()
        return operator.index(self._a[()] if self._a.ndim == 0 else self._a)

    def __repr__(self) -> str:
        _sync()
        return "array(" + np.array2string(self._a, separator=", ") + ")"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        _sync()
        return format(self._a[()] if self._a.ndim == 0 else self._a, spec)

    def __array__(self, *args: Any, **kw: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # -- containers ---------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self) -> Iterator["ndarray"]:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray(self._a[i]) for i in range(len(self._a)))

    def __getitem__(self, key: Any) -> "ndarray":
        key = _unwrap(key, host_ok=True)
        if any(getattr(k, "dtype", None) == bool and getattr(k, "ndim", 0) > 0
               for k in (key if isinstance(key, tuple) else (key,))):
            _sync()  # a boolean mask's result size is counted on the device and read on the host
        return _wrap(self._a[_wrap_indices(key, self._a.shape)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_wrap_indices(_unwrap(key, host_ok=True), self._a.shape)] = _unwrap(value, host_ok=True)

    def __copy__(self) -> "ndarray":
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo: dict) -> "ndarray":
        return ndarray(self._a.copy())

    def __reduce__(self) -> Any:
        raise TypeError("the CuPy stand-in does not pickle")

    __hash__ = None  # type: ignore[assignment]

    # -- NumPy protocols ----------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kw: Any) -> Any:
        if ufunc.__name__ not in MODULE_NAMES["cupy"]:
            return NotImplemented
        out = kw.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kw))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        module = {"numpy": "cupy", "numpy.linalg": "cupy.linalg", "numpy.fft": "cupy.fft"}.get(
            getattr(func, "__module__", ""), None)
        target = sys.modules.get(module) if module else None
        if target is None or func.__name__ not in MODULE_NAMES[module]:
            return NotImplemented
        return getattr(target, func.__name__)(*args, **kwargs)


def _call_out(fn: Any, args: tuple, kw: dict, host_ok: bool = False) -> Any:
    out = kw.get("out")
    result = fn(*_unwrap(args, host_ok), **_unwrap(kw, host_ok))
    return out if isinstance(out, ndarray) else _wrap(result)


def _operator(ufunc: np.ufunc, reflected: bool = False, inplace: bool = False) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            _reject(other)
        if not isinstance(other, (ndarray, np.generic, int, float, complex, bool)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        if inplace:
            ufunc(self._a, _unwrap(other), out=self._a)
            return self
        return _wrap(ufunc(_unwrap(a), _unwrap(b)))
    return op


for _name, _uf in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
                   "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
                   "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor, "lshift": np.left_shift,
                   "rshift": np.right_shift}.items():
    setattr(ndarray, f"__{_name}__", _operator(_uf))
    setattr(ndarray, f"__r{_name}__", _operator(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _operator(_uf, inplace=True))
for _name, _uf in {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
                   "ne": np.not_equal}.items():
    setattr(ndarray, f"__{_name}__", _operator(_uf))
for _name, _uf in {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, _uf=_uf: _wrap(_uf(self._a)))
ndarray.__module__ = "cupy"


# ------------------------------------------------------------------------------------------ modules

def _from_numpy(source: Any, name: str, host_ok: bool = False) -> Any:
    fn = getattr(source, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        return _call_out(fn, args, kw, host_ok)

    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


class _Module(types.ModuleType):
    """A stand-in module: exactly the names of its real CuPy counterpart; those NumPy (or SciPy)
    implements are served by ``source`` on unwrapped arrays, the rest by ``extra`` or not at all."""

    def __init__(self, name: str, source: Any = None, extra: dict | None = None):
        super().__init__(name)
        self.__dict__["_source"] = source
        self.__dict__["_names"] = MODULE_NAMES[name]
        self.__dict__.update(extra or {})

    def __getattr__(self, name: str) -> Any:
        source = self.__dict__["_source"]
        if name in self.__dict__["_names"] and source is not None and hasattr(source, name):
            value = getattr(source, name)
            if isinstance(value, types.ModuleType):  # submodules are stand-ins of their own, or absent
                raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'")
            if callable(value) and not isinstance(value, type):
                value = _from_numpy(source, name)
            self.__dict__[name] = value
            return value
        raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'")

    def __dir__(self) -> list[str]:
        return sorted(self.__dict__["_names"])


def _asarray(a: Any, dtype: Any = None, order: Any = None, *, copy: Any = None, blocking: bool = False) -> ndarray:
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=True)) if copy else (
            a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype)))
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))


def _array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False,
           ndmin: int = 0, *, blocking: bool = False) -> ndarray:
    a = np.array(_unwrap(obj, host_ok=True), dtype=dtype, copy=True, order=order, ndmin=ndmin)
    return ndarray(a)


def _asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def _get_array_module(*args: Any) -> types.ModuleType:
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def _broadcast_to(array: Any, shape: Any) -> ndarray:
    a = _unwrap(array)
    view = np.broadcast_to(a, shape)
    # CuPy's broadcast views are writable: every broadcast copy of an element is the same memory
    return ndarray(np.lib.stride_tricks.as_strided(a, view.shape, view.strides, writeable=True))


def _as_strided(x: Any, shape: Any = None, strides: Any = None) -> ndarray:
    return ndarray(np.lib.stride_tricks.as_strided(_unwrap(x), shape, strides, writeable=True))


def _sized_by_data(name: str) -> Any:
    """Functions whose result size depends on the data (CuPy reads a count from the device)."""
    fn = _from_numpy(np, name)

    def counted(*args: Any, **kw: Any) -> Any:
        _sync()
        return fn(*args, **kw)

    counted.__name__ = name
    return counted


def _take(a: Any, indices: Any, axis: Any = None, out: Any = None) -> ndarray:
    x = _unwrap(a)
    idx = np.asarray(_unwrap(indices, host_ok=True))
    n = x.size if axis is None else x.shape[axis]
    result = np.take(x, np.mod(idx, n) if n else idx, axis=axis, out=_unwrap(out))
    return out if out is not None else _wrap(result)


def _cholesky(a: Any) -> ndarray:
    """cuSOLVER potrf without an error check: the factor of a matrix that is not positive definite is
    computed up to the failing pivot and holds the input's lower triangle past it."""
    x = _unwrap(a)
    try:
        return ndarray(np.linalg.cholesky(x))  # every matrix positive definite: the same factor
    except np.linalg.LinAlgError:
        pass
    out = np.tril(x).astype(np.result_type(x.dtype, np.float32), copy=True)
    flat = out.reshape(-1, *x.shape[-2:])
    for m in flat:
        n = m.shape[0]
        try:
            m[...] = np.linalg.cholesky(m)
            continue
        except np.linalg.LinAlgError:
            pass
        for j in range(n):
            d = m[j, j] - m[j, :j] @ m[j, :j]
            if not d > 0:  # potrf stops at the first non-positive pivot
                break
            m[j, j] = math.sqrt(d)
            m[j + 1:, j] = (m[j + 1:, j] - m[j + 1:, :j] @ m[j, :j]) / m[j, j]
    return ndarray(out)


def _qr(a: Any, mode: str = "reduced") -> Any:
    return _wrap(np.linalg.qr(_unwrap(a), mode=mode))


class _BitGenerator:
    """CuPy's default bit generator (XORWOW): ``random_raw``, and ``state`` as a method (the device
    address of its curand states), not NumPy's settable dict; it holds a lock, so it cannot be copied."""

    def __init__(self, gen: np.random.Generator):
        self._gen = gen
        self._lock = threading.Lock()

    def random_raw(self, size: Any = None, output: bool = True) -> Any:
        return _wrap(self._gen.bit_generator.random_raw(size)) if output else None

    def state(self) -> int:
        return id(self)


class Generator:
    """``cupy.random.Generator``: the methods CuPy has, drawing on the host."""

    def __init__(self, bit_generator: Any):
        self._gen = bit_generator._gen if isinstance(bit_generator, _BitGenerator) else bit_generator
        self.bit_generator = _BitGenerator(self._gen)

    def __getattr__(self, name: str) -> Any:
        if name in CLASS_NAMES["cupy.random.Generator"] and hasattr(self._gen, name):
            method = getattr(self._gen, name)
            return lambda *args, **kw: _call_out(method, args, kw)
        raise AttributeError(f"'cupy.random.Generator' object has no attribute '{name}'")


Generator.__module__ = "cupy.random._generator_api"


def _default_rng(seed: Any = None) -> Generator:
    if isinstance(seed, Generator):
        return seed
    return Generator(np.random.default_rng(_unwrap(seed, host_ok=True)))


class _Stream:
    def synchronize(self) -> None:
        pass

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


_Stream.null = _Stream()  # type: ignore[attr-defined]


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass

    def set_limit(self, size: Any = None, fraction: Any = None) -> None:
        pass


_POOL = _MemoryPool()


class _MemoryHook:
    """``cupy.cuda.memory_hook.MemoryHook``: a context manager whose callbacks the stand-in never
    calls (it has no device memory pool)."""

    name = "MemoryHook"

    def __enter__(self) -> "_MemoryHook":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _runtime() -> types.ModuleType:
    rt = types.ModuleType("cupy.cuda.runtime")
    rt.getDeviceCount = lambda: 1
    rt.getDevice = lambda: 0
    rt.getDeviceProperties = lambda i: {"name": b"CuPy stand-in (NumPy on the CPU)", "totalGlobalMem": 0}
    rt.memGetInfo = lambda: (0, 0)
    rt.deviceSynchronize = lambda: None
    rt.CUDARuntimeError = RuntimeError
    return rt


def _scatter_add(a: ndarray, slices: Any, value: Any) -> None:
    np.add.at(a._a, _wrap_indices(_unwrap(slices, host_ok=True), a._a.shape), _unwrap(value))


@contextlib.contextmanager
def _errstate(*, linalg: Any = None) -> Iterator[None]:
    yield


def _solve_triangular(a: Any, b: Any, trans: Any = 0, lower: bool = False, unit_diagonal: bool = False,
                      overwrite_b: bool = False, check_finite: bool = False) -> ndarray:
    import scipy.linalg

    A, B = _unwrap(a), _unwrap(b)
    if A.ndim == 2:
        return ndarray(scipy.linalg.solve_triangular(A, B, trans=trans, lower=lower, unit_diagonal=unit_diagonal,
                                                     check_finite=False))  # cupyx never checks
    lead = A.shape[:-2]
    Bf = np.broadcast_to(B, (*lead, *B.shape[-(B.ndim - len(lead)):])) if B.ndim > len(lead) else B
    out = np.empty(np.broadcast_shapes(Bf.shape, Bf.shape), np.result_type(A, B))
    for i in np.ndindex(*lead):
        out[i] = scipy.linalg.solve_triangular(A[i], Bf[i], trans=trans, lower=lower, unit_diagonal=unit_diagonal,
                                               check_finite=False)
    return ndarray(out)


def _build() -> dict[str, types.ModuleType]:
    import scipy.special

    cp = _Module("cupy", np, {
        "ndarray": ndarray, "asarray": _asarray, "array": _array, "asanyarray": _asarray,
        "ascontiguousarray": lambda a, dtype=None: _asarray(np.ascontiguousarray(_unwrap(a), dtype=dtype)),
        "asnumpy": _asnumpy, "get_array_module": _get_array_module, "broadcast_to": _broadcast_to,
        "take": _take, "__version__": __version__, "get_default_memory_pool": lambda: _POOL,
        **{n: _sized_by_data(n) for n in ("nonzero", "argwhere", "flatnonzero", "compress", "unique", "extract")},
        "get_default_pinned_memory_pool": lambda: _POOL, "RawKernel": None, "ElementwiseKernel": None})
    del cp.__dict__["RawKernel"], cp.__dict__["ElementwiseKernel"]  # GPU kernels: absent, not callable
    linalg = _Module("cupy.linalg", np.linalg, {"cholesky": _cholesky, "qr": _qr,
                                                "LinAlgError": np.linalg.LinAlgError})
    random = _Module("cupy.random", np.random,
                     {"default_rng": _default_rng, "Generator": Generator, "BitGenerator": _BitGenerator})
    fft = _Module("cupy.fft", np.fft)
    stride_tricks = _Module("cupy.lib.stride_tricks", None, {"as_strided": _as_strided})
    lib = _Module("cupy.lib", None, {"stride_tricks": stride_tricks})
    memory_hook = types.ModuleType("cupy.cuda.memory_hook")
    memory_hook.MemoryHook = _MemoryHook
    cuda = _Module("cupy.cuda", None, {"runtime": _runtime(), "Stream": _Stream, "Device": _Device,
                                       "MemoryPool": _MemoryPool, "memory_hook": memory_hook,
                                       "is_available": lambda: True, "get_device_id": lambda: 0})
    special = _Module("cupyx.scipy.special", scipy.special)
    sp_linalg = _Module("cupyx.scipy.linalg", None, {"solve_triangular": _solve_triangular})
    scipy_ = _Module("cupyx.scipy", None, {"special": special, "linalg": sp_linalg})
    cupyx = _Module("cupyx", None, {"scatter_add": _scatter_add, "errstate": _errstate, "scipy": scipy_})
    cp.__dict__.update(linalg=linalg, random=random, fft=fft, cuda=cuda, lib=lib)
    return {"cupy": cp, "cupy.linalg": linalg, "cupy.random": random, "cupy.fft": fft, "cupy.cuda": cuda,
            "cupy.lib": lib, "cupy.lib.stride_tricks": stride_tricks,
            "cupy.cuda.memory_hook": memory_hook, "cupyx": cupyx, "cupyx.scipy": scipy_,
            "cupyx.scipy.special": special, "cupyx.scipy.linalg": sp_linalg}


_MODULES: dict[str, types.ModuleType] | None = None
_SAVED: dict[str, Any] = {}


def install() -> types.ModuleType:
    """Register the stand-in as ``cupy``/``cupyx`` (and submodules); returns the ``cupy`` module."""
    global _MODULES
    if _MODULES is None:
        _MODULES = _build()
    for name, module in _MODULES.items():
        if sys.modules.get(name) is not module:
            _SAVED.setdefault(name, sys.modules.get(name))
            sys.modules[name] = module
    return _MODULES["cupy"]


def uninstall() -> None:
    """Put back whatever ``cupy``/``cupyx`` were before :func:`install`."""
    for name, module in _SAVED.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    _SAVED.clear()
