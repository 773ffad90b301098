"""Direct 2-d convolutions on the CPU from oneDNN (the ``onednn`` extra), called through its C API.

oneDNN is the convolution library PyTorch's CPU build runs; its JIT kernels convolve channels-last
float32 data without materialising im2col columns or shifted GEMM operands. On this project's CNN layers
(1 thread, batch 64) it runs the 28x28, 64-channel 3x3 convolution in 21.6 ms against 35.7 ms for the
shifted OpenBLAS GEMMs (bench/kernels.py). Only the NumPy backend uses it (CuPy keeps cuBLAS GEMMs), only
for float32, and only where the library loads: :func:`available` says so, and ``DUALTENSOR_ONEDNN=0``
turns it off. Channels-last arrays (conv2d's own results) are passed in place, others after one transposing
copy; results are channels-last. Geometries for which oneDNN has only its reference loops (e.g. one input
channel) are declined (None), and conv2d keeps its GEMMs for them; so is the strided 1x1 weight gradient, whose
oneDNN 3.2 kernel corrupts the heap on AVX2 CPUs.
:func:`matmul` runs the linear layers' float32 products (backend.fast_matmul) where oneDNN has a brgemm kernel
for them (AVX-512 CPUs; on AVX2 ones its matmul is a plain GEMM, no faster than OpenBLAS's: declined).
Primitive descriptors are cached per shape, strides and options (creating one costs about 0.7 ms).
Weights are reordered into the kernel's blocked layout on every call, except where they come as
:func:`preferred_weights` lays them out ((kh, kw, C, O) memory, how :class:`dualtensor.nn.Conv2d` keeps them):
the forward kernels read those in place.

The wheel ``onednn-cpu-gomp`` installs ``libdnnl.so.3`` under ``sys.prefix/lib`` (oneDNN 3.2, GNU OpenMP
threads: ``OMP_NUM_THREADS`` or threadpoolctl's ``openmp`` limit set its thread count).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import backend

__all__ = ["available", "conv_forward", "conv_backward_data", "conv_backward_weights", "matmul", "preferred_weights"]

_F32, _ANY = 3, 1                              # dnnl_f32, dnnl_format_tag_any
_FORWARD, _DIRECT, _CPU, _IN_ORDER = 64, 1, 1, 1  # forward_training, convolution_direct, cpu engine, stream flags
_Q_WEIGHTS, _Q_DIFF_WEIGHTS, _Q_IMPL = 131, 132, 8  # dnnl_query_{weights,diff_weights}_md, impl_info_str
_SRC, _DST, _WEIGHTS, _BIAS = 1, 17, 33, 41    # DNNL_ARG_*
_DIFF_SRC, _DIFF_DST, _DIFF_WEIGHTS = 129, 145, 161
_Dims = ctypes.c_int64 * 12
_CACHE_SIZE = 256


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class _Library:
    """libdnnl with one CPU engine and stream, and the cached primitives."""

    def __init__(self, lib: Any):
        self.lib = lib
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
        lib.dnnl_primitive_desc_query_md.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_get_size.argtypes = [ctypes.c_void_p]
        v = lib.dnnl_version().contents
        if v.major != 3:
            raise OSError(f"oneDNN {v.major}.{v.minor}: the C API of version 3 is needed")
        self.version = f"{v.major}.{v.minor}.{v.patch}"
        self.engine, self.stream = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), _CPU, 0), "engine")
        self.check(lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine, _IN_ORDER), "stream")
        self.cache: OrderedDict = OrderedDict()
        self.shares_cores = False
        self.brgemm_matmul: bool | None = None  # whether oneDNN has brgemm matmul kernels on this CPU
        self.plain_weights: bool | None = None  # whether a direct forward kernel reads (kh, kw, C, O) weights
        self.lock = threading.RLock()  # one stream and a shared cache: calls from several threads take turns
        self.building = threading.local()  # .made: the handles the entry this thread builds has created

    @staticmethod
    def check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN: {what} failed (dnnl status {status})")

    def desc(self, a: Any, plain: bool = False) -> ctypes.c_void_p:
        """A float32 memory descriptor of the array's shape and strides (in elements). Size-1 axes, whose
        stride is arbitrary, get the one of a dense layout (channels-last for 4-d data, row-major for weights
        and ``plain``), so that oneDNN recognises it."""
        md = ctypes.c_void_p()
        strides = [s // a.itemsize for s in a.strides]
        order = (1, 3, 2, 0) if a.ndim == 4 and not plain else tuple(range(a.ndim - 1, -1, -1))  # innermost first
        for inner, i in zip((None,) + order, order):
            if a.shape[i] == 1:
                strides[i] = 1 if inner is None else strides[inner] * a.shape[inner]
        self.check(self.lib.dnnl_memory_desc_create_with_strides(
            ctypes.byref(md), a.ndim, _Dims(*a.shape), _F32, _Dims(*strides)), "memory desc")
        return self.own("md", md)

    def any_desc(self, shape: tuple) -> ctypes.c_void_p:
        md = ctypes.c_void_p()
        self.check(self.lib.dnnl_memory_desc_create_with_tag(ctypes.byref(md), len(shape), _Dims(*shape), _F32, _ANY),
                   "memory desc")
        return self.own("md", md)

    def own(self, kind: str, handle: ctypes.c_void_p) -> ctypes.c_void_p:
        """``handle`` (a memory descriptor "md", primitive descriptor "pd" or primitive "prim"), recorded as
        belonging to the cache entry being built, which destroys it when it is evicted (outside a build the
        caller destroys it)."""
        made = getattr(self.building, "made", None)
        if made is not None:
            made.append((kind, handle))
        return handle

    def destroy(self, handles: list) -> None:
        destroy = {"md": self.lib.dnnl_memory_desc_destroy, "pd": self.lib.dnnl_primitive_desc_destroy,
                   "prim": self.lib.dnnl_primitive_destroy}
        for kind, h in reversed(handles):
            destroy[kind](h)

    def implementation(self, pd: ctypes.c_void_p) -> str:
        """The name of the implementation oneDNN chose for ``pd``, e.g. ``"jit:avx2"``."""
        name = ctypes.c_char_p()
        self.check(self.lib.dnnl_primitive_desc_query(pd, _Q_IMPL, 0, ctypes.byref(name)), "query")
        return (name.value or b"").decode()

    def primitive(self, pd: ctypes.c_void_p, fast: bool = True) -> ctypes.c_void_p:
        """The primitive of ``pd``; with ``fast``, refused (RuntimeError) when oneDNN only has its reference
        implementation for it (plain loops, far slower than the GEMM layouts)."""
        name = self.implementation(pd) if fast else ""
        if name.startswith("ref"):
            raise RuntimeError(f"oneDNN: only the reference implementation ({name})")
        p = ctypes.c_void_p()
        self.check(self.lib.dnnl_primitive_create(ctypes.byref(p), pd), "primitive")
        self.own("prim", p)
        if fast and not self.shares_cores:  # the first fast primitive: two thread pools share the cores now
            self.shares_cores = True
            backend.let_idle_blas_threads_sleep()
        return p

    def reorder(self, src_md: Any, dst_md: Any) -> ctypes.c_void_p:
        pd = ctypes.c_void_p()
        self.check(self.lib.dnnl_reorder_primitive_desc_create(ctypes.byref(pd), src_md, self.engine, dst_md,
                                                               self.engine, None), "reorder")
        return self.primitive(self.own("pd", pd), fast=False)

    def run(self, prim: Any, args: list) -> None:
        """Execute with (argument id, memory descriptor, array) triples, the arrays passed in place."""
        mems = []
        with self.lock:
            try:
                for _, md, a in args:
                    m = ctypes.c_void_p()
                    self.check(self.lib.dnnl_memory_create(ctypes.byref(m), md, self.engine,
                                                           ctypes.c_void_p(a.ctypes.data)), "memory")
                    mems.append(m)
                arr = (_Arg * len(args))(*[_Arg(a[0], m) for a, m in zip(args, mems)])
                self.check(self.lib.dnnl_primitive_execute(prim, self.stream, len(args), arr), "execute")
                self.check(self.lib.dnnl_stream_wait(self.stream), "stream wait")
            finally:
                for m in mems:
                    self.lib.dnnl_memory_destroy(m)

    def cached(self, key: tuple, build: Any) -> Any:
        """build() once per key; a build that raised RuntimeError (oneDNN declines) is cached as None. The
        least recently used entry beyond _CACHE_SIZE is destroyed with the handles its build created, so a
        caller must hold ``lock`` from this call until it has run what it got."""
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key][0]
            outer = getattr(self.building, "made", None)  # a build may build another entry (a hint) inside
            self.building.made = []
            try:
                hit = build()
            except RuntimeError:
                hit = None
            finally:
                made, self.building.made = self.building.made, outer
            if hit is None:  # declined: nothing it made is kept
                self.destroy(made)
                made = []
            self.cache[key] = (hit, made)
            while len(self.cache) > _CACHE_SIZE:
                self.destroy(self.cache.popitem(last=False)[1][1])
            return hit


_LIB: Any = None  # a _Library, or False where oneDNN is not there


def _load() -> Any:
    global _LIB
    if _LIB is None:
        _LIB = False
        if os.environ.get("DUALTENSOR_ONEDNN", "1") != "0":
            for path in (os.path.join(sys.prefix, "lib", "libdnnl.so.3"), ctypes.util.find_library("dnnl")):
                if path:
                    try:
                        _LIB = _Library(ctypes.CDLL(path))
                    except OSError:
                        continue
                    break
    return _LIB


def available() -> bool:
    """True when oneDNN's library loaded (and ``DUALTENSOR_ONEDNN`` is not ``0``)."""
    return bool(_load())


def version() -> str | None:
    """The loaded oneDNN version, e.g. ``"3.2.0"``, or None."""
    lib = _load()
    return lib.version if lib else None


def _passable(a: Any) -> Any:
    """The array itself when oneDNN can read it in place (float32, positive strides), else a copy."""
    if a.dtype == np.float32 and all(s > 0 and s % a.itemsize == 0 for s, n in zip(a.strides, a.shape) if n > 1):
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def _nhwc(a: Any) -> Any:
    """A float32 (N, C, H, W) array laid out channels-last: itself when it is, else a transposing copy (oneDNN's
    fast kernels take channels-last data; for plain NCHW it only has an im2col GEMM or its reference loops)."""
    a = _passable(a)
    s = a.strides
    if s[1] == a.itemsize and s[3] == a.shape[1] * a.itemsize and s[2] == a.shape[3] * s[3]:
        return a
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _channels_last(shape: tuple) -> Any:
    """An empty float32 (N, C, H, W) array laid out as (N, H, W, C)."""
    n, c, h, w = shape
    return np.empty((n, h, w, c), np.float32).transpose(0, 3, 1, 2)


def _geometry(stride: tuple, pads: tuple, dilation: tuple) -> tuple:
    return (_Dims(*stride), _Dims(*(d - 1 for d in dilation)), _Dims(pads[0][0], pads[1][0]),
            _Dims(pads[0][1], pads[1][1]))


def _weights_shape(shape: tuple, groups: int) -> tuple:
    o, c = shape[:2]
    return shape if groups == 1 else (groups, o // groups, c) + tuple(shape[2:])


def _forward(lib: _Library, x: Any, wshape: tuple, bias: bool, y: Any, stride: tuple, pads: tuple,
             dilation: tuple, groups: int, hwio: tuple | None = None) -> tuple:
    """(primitive descriptor, primitive, src, weights, bias, dst descriptors) of a forward convolution; with
    ``hwio`` (weight strides from _hwio_strides), one that reads (kh, kw, C, O) weights in place, refused (None)
    unless oneDNN has a direct kernel for it (for 1x1 kernels it has only a GEMM for plain weights)."""
    def build() -> tuple:
        src, dst = lib.desc(x), lib.desc(y)
        wmd = _hwio_desc(lib, wshape, hwio) if hwio else lib.any_desc(_weights_shape(wshape, groups))
        bmd = lib.desc(np.empty(wshape[0], np.float32)) if bias else None
        pd = ctypes.c_void_p()
        lib.check(lib.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd), lib.engine, _FORWARD, _DIRECT, src, wmd, bmd, dst, *_geometry(stride, pads, dilation),
            None), "convolution forward")
        lib.own("pd", pd)
        if hwio and not lib.implementation(pd).startswith(("brg", "jit")):
            raise RuntimeError("oneDNN: no direct kernel for plain weights")
        wmd = ctypes.c_void_p(lib.lib.dnnl_primitive_desc_query_md(pd, _Q_WEIGHTS, 0))
        return pd, lib.primitive(pd), src, wmd, bmd, dst
    return lib.cached(_forward_key(x, wshape, bias, y, stride, pads, dilation, groups, hwio), build)


def _forward_key(x: Any, wshape: tuple, bias: bool, y: Any, stride: tuple, pads: tuple, dilation: tuple,
                 groups: int, hwio: tuple | None = None) -> tuple:
    return "fwd", x.shape, x.strides, wshape, bias, y.strides, stride, pads, dilation, groups, hwio


def _hwio_strides(w: Any, groups: int) -> tuple | None:
    """The element strides of the (O, C, kh, kw) float32 array ``w`` when it is a view of (kh, kw, C, O) memory
    (preferred_weights; also a cropped kernel of such weights), else None. Size-1 axes get the strides of
    dense (kh, kw, C, O) memory, which oneDNN recognises."""
    o, c, kh, kw = w.shape
    s = tuple(st // 4 for st in w.strides)
    if groups != 1 or w.dtype != np.float32 or (o > 1 and s[0] != 1) or (c > 1 and s[1] != o):
        return None
    dense = _dense_hwio(w.shape)
    s = tuple(d if n == 1 else st for st, d, n in zip(s, dense, w.shape))
    return s if s[2] >= dense[2] and s[3] == dense[3] else None


def _dense_hwio(shape: tuple) -> tuple:
    """The element strides of (O, C, kh, kw) as a view of dense (kh, kw, C, O) memory."""
    o, c, _, kw = shape
    return 1, o, kw * c * o, c * o


def _hwio_desc(lib: _Library, wshape: tuple, strides: tuple) -> ctypes.c_void_p:
    md = ctypes.c_void_p()
    lib.check(lib.lib.dnnl_memory_desc_create_with_strides(
        ctypes.byref(md), 4, _Dims(*wshape), _F32, _Dims(*strides)), "memory desc")
    return lib.own("md", md)


def preferred_weights(w: Any, groups: int = 1) -> Any:
    """Convolution weights (O, C/G, kh, kw) as oneDNN's forward kernels read them without a reorder: a view of
    (kh, kw, C, O) float32 memory, the same values (itself when it is one). Weights of grouped and 1x1
    convolutions, and ones with one input or output channel, are returned C-contiguous: oneDNN has no direct
    kernel for them in that layout. :class:`dualtensor.nn.Conv2d` keeps its weights so."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 4 or groups != 1 or min(w.shape) < 2:
        return np.ascontiguousarray(w)
    if _hwio_strides(w, groups) == _dense_hwio(w.shape):
        return w
    out = np.empty(w.shape[2:] + w.shape[1::-1], np.float32).transpose(3, 2, 0, 1)
    out[...] = w
    return out


def reads_plain_weights() -> bool:
    """Whether oneDNN has a direct forward kernel on this CPU that reads :func:`preferred_weights` in place
    (its brgemm convolutions for AVX-512 do; with AVX2 only a GEMM does, which is declined, so the weights
    are reordered on every call whatever their layout). Probed once on one 3x3 geometry."""
    lib = _load()
    if not lib:
        return False
    with lib.lock:
        if lib.plain_weights is None:
            w = preferred_weights(np.zeros((16, 8, 3, 3), np.float32))
            x, y = _nhwc(np.zeros((1, 8, 8, 8), np.float32)), _channels_last((1, 16, 8, 8))
            geo = (w.shape, False, y, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
            lib.plain_weights = _forward(lib, x, *geo, hwio=_hwio_strides(w, 1)) is not None
        return lib.plain_weights


def _hint(forward: Any) -> Any:
    """The forward primitive descriptor a backward one is created from."""
    if forward is None:
        raise RuntimeError("oneDNN: no forward convolution for this geometry")
    return forward[0]


def _weights_in(lib: _Library, w: Any, wmd: Any, groups: int, owner: tuple) -> Any:
    """The (O, C/G, kh, kw) weights reordered into the layout ``wmd`` of the primitive cached under ``owner``
    (a flat float32 buffer). The reorder is cached by that key, not by ``wmd``'s address, which an evicted
    entry frees for another layout."""
    w = _passable(w).reshape(_weights_shape(w.shape, groups))
    user = lib.desc(w, plain=True)
    key = ("reorder in", w.shape, w.strides, owner)
    prim = lib.cached(key, lambda: lib.reorder(user, wmd))
    out = np.empty(lib.lib.dnnl_memory_desc_get_size(wmd) // 4, np.float32)
    lib.run(prim, [(_SRC, user, w), (_DST, wmd, out)])
    lib.lib.dnnl_memory_desc_destroy(user)
    return out


def conv_forward(x: Any, w: Any, b: Any, stride: tuple, pads: tuple, dilation: tuple, groups: int) -> Any:
    """conv2d of (N, C, H, W) float32 ``x`` (any strides) with (O, C/G, kh, kw) ``w`` and optional bias:
    a channels-last (N, O, Ho, Wo) array, or None where oneDNN does not take the problem."""
    lib = _load()
    x = _nhwc(x)
    ho = (x.shape[2] + sum(pads[0]) - dilation[0] * (w.shape[2] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + sum(pads[1]) - dilation[1] * (w.shape[3] - 1) - 1) // stride[1] + 1
    y = _channels_last((x.shape[0], w.shape[0], ho, wo))
    geo = (tuple(w.shape), b is not None, y, stride, pads, dilation, groups)
    hwio = _hwio_strides(w, groups)
    with lib.lock:  # what the cache gives stays alive until it has run
        hit = _forward(lib, x, *geo, hwio=hwio) if hwio else None
        in_place = hit is not None  # the weights read as they are, else reordered into the kernel's layout
        if not in_place:
            hit = _forward(lib, x, *geo)
        if hit is None:
            return None
        _, prim, src, wmd, bmd, dst = hit
        weights = w if in_place else _weights_in(lib, w, wmd, groups, _forward_key(x, *geo))
        args = [(_SRC, src, x), (_WEIGHTS, wmd, weights), (_DST, dst, y)]
        if b is not None:
            args.append((_BIAS, bmd, np.ascontiguousarray(b, dtype=np.float32)))
        lib.run(prim, args)
    return y


def conv_backward_data(g: Any, w: Any, x_shape: tuple, stride: tuple, pads: tuple, dilation: tuple,
                       groups: int) -> Any:
    """The input cotangent (channels-last (N, C, H, W)) of conv2d for the output cotangent ``g``
    (N, O, Ho, Wo), or None where oneDNN does not take the problem."""
    lib = _load()
    g = _nhwc(g)
    gx = _channels_last(tuple(x_shape))
    wshape = tuple(w.shape)

    def build() -> tuple:
        hint = _hint(_forward(lib, gx, wshape, False, g, stride, pads, dilation, groups))
        dsrc, ddst, wmd = lib.desc(gx), lib.desc(g), lib.any_desc(_weights_shape(wshape, groups))
        pd = ctypes.c_void_p()
        lib.check(lib.lib.dnnl_convolution_backward_data_primitive_desc_create(
            ctypes.byref(pd), lib.engine, _DIRECT, dsrc, wmd, ddst, *_geometry(stride, pads, dilation), hint, None),
            "convolution backward data")
        wmd = ctypes.c_void_p(lib.lib.dnnl_primitive_desc_query_md(lib.own("pd", pd), _Q_WEIGHTS, 0))
        return lib.primitive(pd), dsrc, wmd, ddst
    key = ("bwd data", gx.shape, g.shape, g.strides, wshape, stride, pads, dilation, groups)
    with lib.lock:  # what the cache gives stays alive until it has run
        hit = lib.cached(key, build)
        if hit is None:
            return None
        prim, dsrc, wmd, ddst = hit
        weights = _weights_in(lib, w, wmd, groups, key)
        lib.run(prim, [(_DIFF_DST, ddst, g), (_WEIGHTS, wmd, weights), (_DIFF_SRC, dsrc, gx)])
    return gx


def conv_backward_weights(g: Any, x: Any, w_shape: tuple, stride: tuple, pads: tuple, dilation: tuple,
                          groups: int) -> Any:
    """The weight cotangent (O, C/G, kh, kw), C-contiguous, of conv2d for input ``x`` and output
    cotangent ``g``, or None where oneDNN does not take the problem."""
    lib = _load()
    g, x = _nhwc(g), _nhwc(x)
    wshape = tuple(w_shape)
    gw = np.empty(_weights_shape(wshape, groups), np.float32)

    def build() -> tuple:
        hint = _hint(_forward(lib, x, wshape, False, g, stride, pads, dilation, groups))
        src, ddst, wmd = lib.desc(x), lib.desc(g), lib.any_desc(gw.shape)
        pd = ctypes.c_void_p()
        lib.check(lib.lib.dnnl_convolution_backward_weights_primitive_desc_create(
            ctypes.byref(pd), lib.engine, _DIRECT, src, wmd, None, ddst, *_geometry(stride, pads, dilation), hint,
            None), "convolution backward weights")
        lib.own("pd", pd)
        if lib.implementation(pd).startswith("jit_1x1") and max(stride) > 1:
            # oneDNN 3.2's strided 1x1 weight-gradient kernel (its reduce-to-unit-stride copy) corrupts the heap
            # on AVX2 CPUs (seen on an AMD EPYC; results right, malloc aborts later): conv2d computes these itself
            raise RuntimeError("oneDNN: strided 1x1 backward-weights kernel declined")
        wmd = ctypes.c_void_p(lib.lib.dnnl_primitive_desc_query_md(pd, _Q_DIFF_WEIGHTS, 0))
        user = lib.desc(gw, plain=True)
        return lib.primitive(pd), src, wmd, ddst, lib.reorder(wmd, user), user
    with lib.lock:  # what the cache gives stays alive until it has run
        hit = lib.cached(("bwd weights", x.shape, x.strides, g.shape, g.strides, wshape, stride, pads, dilation,
                          groups), build)
        if hit is None:
            return None
        prim, src, wmd, ddst, back, user = hit
        blocked = np.empty(lib.lib.dnnl_memory_desc_get_size(wmd) // 4, np.float32)
        lib.run(prim, [(_SRC, src, x), (_DIFF_DST, ddst, g), (_DIFF_WEIGHTS, wmd, blocked)])
        lib.run(back, [(_SRC, wmd, blocked), (_DST, user, gw)])
    return gw.reshape(wshape)


def _matmul_desc(lib: _Library, src: Any, wei: Any, dst: Any) -> tuple:
    """(primitive descriptor, whether oneDNN chose a brgemm kernel) of a float32 matmul."""
    pd = ctypes.c_void_p()
    lib.check(lib.lib.dnnl_matmul_primitive_desc_create(ctypes.byref(pd), lib.engine, src, wei, None, dst, None),
              "matmul")
    return lib.own("pd", pd), lib.implementation(pd).startswith("brg")


def _has_brgemm_matmul(lib: _Library) -> bool:
    """Whether oneDNN picks a brgemm kernel for a plain float32 product on this CPU (asked once)."""
    if lib.brgemm_matmul is None:
        md = lib.desc(np.zeros((64, 64), np.float32), plain=True)
        pd, lib.brgemm_matmul = _matmul_desc(lib, md, md, md)
        lib.lib.dnnl_primitive_desc_destroy(pd)
        lib.lib.dnnl_memory_desc_destroy(md)
    return lib.brgemm_matmul


def runs_matmul() -> bool:
    """Whether :func:`matmul` takes float32 products here (oneDNN loaded, with a brgemm kernel on this CPU)."""
    lib = _load()
    return bool(lib) and _has_brgemm_matmul(lib)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` of 2-d float32 arrays (any positive strides, transposed views in place) as a C-contiguous
    array from oneDNN's matmul, or None where oneDNN is not there or has no brgemm kernel for it (CPUs without
    AVX-512: there its matmul is the GEMM NumPy's OpenBLAS matches)."""
    if not runs_matmul():  # (its probe builds no cache entry: no lock needed)
        return None
    lib = _load()
    a, b = _passable(a), _passable(b)
    out = np.empty((a.shape[0], b.shape[1]), np.float32)

    def build() -> tuple:
        src, wei, dst = lib.desc(a, plain=True), lib.desc(b, plain=True), lib.desc(out, plain=True)
        pd, brgemm = _matmul_desc(lib, src, wei, dst)
        if not brgemm:
            raise RuntimeError("oneDNN: no brgemm matmul kernel here")
        return lib.primitive(pd), src, wei, dst
    with lib.lock:  # what the cache gives stays alive until it has run
        hit = lib.cached(("matmul", a.shape, a.strides, b.shape, b.strides), build)
        if hit is None:
            return None
        prim, src, wei, dst = hit
        lib.run(prim, [(_SRC, src, a), (_WEIGHTS, wei, b), (_DST, dst, out)])
    return out
