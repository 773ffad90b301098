"""The only module that knows about NumPy versus CuPy.

Every rule is written once against ``xp``, the array module of its inputs; this module
finds it, moves arrays between devices and holds the dtype and RNG defaults.
"""
from __future__ import annotations

import collections
import copy
import os
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
# loaded with the package, so thread limits (threadpoolctl) set after import reach its BLAS too
from scipy.linalg import blas as _blas

_cupy: types.ModuleType | None = None
_cupy_tried = False
_default_dtype = np.float32


def cupy_module() -> types.ModuleType | None:
    """CuPy if it imports and a GPU is usable, else None (imported lazily, once)."""
    global _cupy, _cupy_tried
    if not _cupy_tried:
        _cupy_tried = True
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception:  # no cupy, no driver or no device
            _cupy = None
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    return cupy_module() is not None


def gpu_count() -> int:
    """The number of GPUs CuPy sees (0 without CuPy or a GPU)."""
    cp = cupy_module()
    return int(cp.cuda.runtime.getDeviceCount()) if cp is not None else 0


def select_gpu(index: int) -> None:
    """Make GPU ``index`` the current device of this process (CuPy)."""
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("select_gpu: cupy is not installed or sees no GPU")
    cp.cuda.Device(index).use()


def is_cupy(x: Any) -> bool:
    """True for a CuPy ndarray (checked without importing CuPy)."""
    return type(x).__module__.startswith("cupy")


def is_array(x: Any) -> bool:
    """True for a NumPy or CuPy ndarray."""
    return isinstance(x, np.ndarray) or (is_cupy(x) and hasattr(x, "shape"))


def get_xp(*arrays: Any, op: str = "operation") -> types.ModuleType:
    """The array module (numpy or cupy) of ``arrays``; scalars (Python or NumPy) and None are ignored.

    Mixing NumPy and CuPy arrays raises ``TypeError`` naming ``op``; NumPy scalars mix with either,
    as CuPy accepts them.
    """
    has_np = has_cp = False
    for a in arrays:
        if type(a) is np.ndarray:  # the common case first: no module-name check
            has_np = True
        elif is_cupy(a):
            has_cp = True
        elif isinstance(a, np.ndarray):
            has_np = True
    if has_cp:
        if has_np:
            kinds = ", ".join(f"{type(a).__module__}.{type(a).__name__}{getattr(a, 'shape', '')}"
                              for a in arrays if hasattr(a, "shape"))
            raise TypeError(f"{op}: cannot mix numpy and cupy arrays in one operation ({kinds}); "
                            "move them to one device with dualtensor.to_device")
        import cupy

        return cupy
    return np


def to_device(x: Any, device: str) -> Any:
    """Copy an array (or DualTensor / pytree of arrays) to ``"cpu"`` (numpy) or ``"gpu"`` (cupy)."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"to_device: device must be 'cpu' or 'gpu', got {device!r}")
    if hasattr(x, "_map_arrays"):
        return x._map_arrays(lambda a: to_device(a, device))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(a, device) for a in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if device == "cpu":
        return x.get() if is_cupy(x) else np.asarray(x)
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("to_device: device 'gpu' requested but cupy is not installed or sees no GPU "
                           "(pip install 'dualtensor[gpu]')")
    return cp.asarray(x)


def to_host(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: CuPy arrays are copied to the host (``.get()``), anything else goes
    through ``np.asarray``."""
    return x.get() if is_cupy(x) else np.asarray(x)


def device_of(x: Any) -> str:
    """``"gpu"`` for CuPy arrays, else ``"cpu"``."""
    return "gpu" if is_cupy(x) else "cpu"


def array_module(device: str) -> types.ModuleType:
    """numpy for ``"cpu"``, cupy for ``"gpu"``."""
    if device == "gpu":
        cp = cupy_module()
        if cp is None:
            raise RuntimeError("device 'gpu' requested but cupy is not installed or sees no GPU")
        return cp
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return np


def get_default_dtype() -> np.dtype:
    """The floating dtype used for new parameters and data (float32 unless changed)."""
    return np.dtype(_default_dtype)


def set_default_dtype(dtype: Any) -> None:
    """Set the default floating dtype (float32 or float64)."""
    global _default_dtype
    d = np.dtype(dtype)
    if d not in (np.float32, np.float64):
        raise ValueError(f"set_default_dtype: expected float32 or float64, got {d}")
    _default_dtype = d.type


def rng_module(rng: Any) -> types.ModuleType | None:
    """cupy for a CuPy ``Generator``, numpy for a NumPy one, None for anything else (a seed)."""
    if rng is not None and type(rng).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np if isinstance(rng, (np.random.Generator, np.random.RandomState)) else None


def generator_state(rng: Any) -> Any:
    """A copy of a NumPy generator's state (``Generator`` or legacy ``RandomState``), to rewind it with
    :func:`set_generator_state`. Other generators cannot be rewound (CuPy's expose no settable state):
    ``ValueError``."""
    if isinstance(rng, np.random.Generator):
        return copy.deepcopy(rng.bit_generator.state)
    if isinstance(rng, np.random.RandomState):
        return rng.get_state()
    raise ValueError(f"a {type(rng).__module__}.{type(rng).__name__} cannot be rewound: its state cannot be saved")


def set_generator_state(rng: Any, state: Any) -> None:
    """Rewind a NumPy generator to a :func:`generator_state`."""
    if isinstance(rng, np.random.RandomState):
        rng.set_state(state)
    else:
        rng.bit_generator.state = state


def generator_for(rng: Any, xp: types.ModuleType) -> Any:
    """A generator of array module ``xp`` from a seed, None or a generator: a generator of the other
    module seeds a fresh one from its own stream (so one seeded generator drives either device
    reproducibly). Seeding a CuPy generator sets up its whole bank of curand states: make one per run
    (or epoch), not one per draw."""
    mod = rng_module(rng)
    if mod is xp:
        return rng
    if mod is not None:  # the other device's generator: seed ours from it
        seed = rng.integers(0, 2**62, size=1)
        rng = int(seed.get()[0] if is_cupy(seed) else seed[0])
    return default_rng(rng, xp)


_DEFAULT_GENERATORS: dict[str, Any] = {}


def default_generator(xp: types.ModuleType) -> Any:
    """One unseeded generator per array module, for draws that ask for no particular seed."""
    if xp.__name__ not in _DEFAULT_GENERATORS:
        _DEFAULT_GENERATORS[xp.__name__] = default_rng(None, xp)
    return _DEFAULT_GENERATORS[xp.__name__]


def default_rng(seed: Any = None, xp: types.ModuleType = np) -> Any:
    """A seeded ``Generator`` of the given array module."""
    return xp.random.default_rng(seed)


def quiet_float_errors() -> Any:
    """A context in which NumPy's overflow/invalid/divide warnings are off (CuPy never warns): a
    diverging run is reported once, by its finite check, not by a burst of RuntimeWarnings."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def synchronize(xp: types.ModuleType) -> None:
    """Wait for queued GPU work (no-op on numpy); needed for honest timings."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def scatter_add(xp: types.ModuleType, target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` with repeated indices accumulated (unbuffered). Out-of-range
    indices raise on NumPy and wrap around on CuPy: callers pass checked indices (getitem does)."""
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def gemm(a: Any, b: Any, out: Any, accumulate: bool = False) -> Any:
    """``out = a @ b``, or ``out += a @ b`` with ``accumulate``, for 2-d operands of one float dtype.

    On NumPy this is one call of NumPy's own BLAS (cblas ``?gemm`` with beta = 0 or 1): no temporary
    for the product, and any operand or ``out`` whose rows (or columns) are contiguous, such as a row
    block ``x[i:j]`` or a strided slice, is passed in place with its leading dimension. Elsewhere (CuPy,
    a NumPy without an ILP64 OpenBLAS, mixed dtypes) matmul, and ``+=`` for the accumulation. Using
    NumPy's own BLAS matters beyond the copies: a second BLAS library (SciPy's) keeps its own thread
    pool, and with more than one thread the two pools' spinning workers take each other's cores."""
    xp = get_xp(a, b, out)
    if xp is np and _cblas_gemm(a, b, out, accumulate):
        return out
    if not accumulate:
        return xp.matmul(a, b, out=out)
    if xp is np and out.flags.c_contiguous and a.dtype == b.dtype == out.dtype and out.dtype.char in "fd":
        # SciPy's BLAS (column-major): out^T = b^T a^T, each operand passed as a Fortran-ordered matrix
        (fa, ta), (fb, tb) = _fortran_operand(b), _fortran_operand(a)
        fn = _blas.sgemm if out.dtype.char == "f" else _blas.dgemm
        res = fn(1.0, fa, fb, beta=1.0, c=out.T, trans_a=ta, trans_b=tb, overwrite_c=1)
        if res.ctypes.data != out.ctypes.data:  # f2py copied instead of writing in place
            out[...] = res.T
        return out
    out += a @ b
    return out


# Products below this many multiply-adds stay on NumPy's BLAS: a oneDNN call has a fixed cost of its own
# (bench/results/matmul-ab-1t.md: the 64 x 1024 -> 10 product)
_MATMUL_MIN_MACS = 1 << 21


def fast_matmul(a: Any, b: Any, fresh_output: bool = False) -> Any:
    """``a @ b`` of two 2-d arrays as a C-contiguous array computed faster than ``xp.matmul`` would in a step
    (as a whole: bench/results/matmul-ab-*.md, matmul-pools-*.md), or None (then the caller's own product).

    For NumPy float32 operands where the ``onednn`` extra is installed and oneDNN has a brgemm kernel for them
    (AVX-512 CPUs): products of at least 2**21 multiply-adds run on oneDNN's matmul (1 thread, 64 x 1024 ->
    1024: 1.03 against OpenBLAS's 1.38 ms in bench/results/matmul-ab-1t.md); smaller ones that OpenBLAS would
    split over its threads run on NumPy's BLAS held at one thread for the call (:func:`_calling_thread_product`).

    ``fresh_output``: a large result written to memory not in cache (a weight cotangent). At one thread
    an OpenBLAS running AVX-512 kernels writes that faster than oneDNN (1024 x 784 from 64 rows: 1.05 against
    1.64 ms, bench/results/matmul-ab-1t.md), so it is declined there; an OpenBLAS on AVX2 kernels on an
    AVX-512 CPU (one it does not know) takes twice oneDNN's time (bench/results/matmul-ab-epyc6-1t.md). On
    more threads oneDNN takes it like the other products: two libraries' thread pools on the same cores slow
    each other."""
    macs = a.shape[0] * a.shape[1] * b.shape[1]
    if macs <= _OPENBLAS_SPLIT_MACS:  # (first: the common tiny products skip every other check)
        return None
    lib = direct_conv(a, b)
    if lib is None:
        return None
    if macs < _MATMUL_MIN_MACS:
        return _calling_thread_product(a, b) if _SMALL_ON_ONE_THREAD and lib.runs_matmul() else None
    if fresh_output and cpu_threads() == 1 and numpy_blas_avx512():
        return None
    return lib.matmul(a, b)


def product(a: Any, b: Any, fresh_output: bool = False) -> Any:
    """``a @ b`` of 2-d arrays: :func:`fast_matmul`'s result where it takes the product, else ``xp.matmul``'s."""
    out = fast_matmul(a, b, fresh_output)
    return get_xp(a, b).matmul(a, b) if out is None else out


# OpenBLAS computes a GEMM of at most this many multiply-adds on the calling thread anyway
# (interface/gemm.c: SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD = 65536 * 4)
_OPENBLAS_SPLIT_MACS = 1 << 18
_THREADS_LOCK = threading.Lock()  # held while NumPy's BLAS is at one thread for a product
# no fork while the count is lowered: a child would keep one thread and a held lock
os.register_at_fork(before=_THREADS_LOCK.acquire, after_in_parent=_THREADS_LOCK.release,
                    after_in_child=_THREADS_LOCK.release)
# DUALTENSOR_SMALL_PRODUCTS=pool leaves the small products to OpenBLAS's pool (the A/B of bench/matmul.py --pools)
_SMALL_ON_ONE_THREAD = os.environ.get("DUALTENSOR_SMALL_PRODUCTS", "one-thread") != "pool"


_blas_product = np.matmul  # (a test's hook: the product inside the one-thread window)


def numpy_blas_pthreads() -> bool:
    """Whether NumPy's BLAS is an OpenBLAS with its own pthreads pool (whose thread count is process-wide)."""
    fns = _numpy_cblas()
    return bool(fns and fns["pthreads"])


def _calling_thread_product(a: Any, b: Any) -> Any:
    """``a @ b`` on NumPy's BLAS with its thread pool held at one thread for the call, or None.

    Where oneDNN runs the large products on its own OpenMP threads, a small product that OpenBLAS would split
    (the MLP's 64 x 1024 -> 10 layer: 655k multiply-adds, over its 262k threshold) wakes OpenBLAS's workers
    too, and the two pools then spin against each other on the same cores: at two threads the MLP's steps took
    up to 1.33x as long (bench/results/matmul-pools-epyc6.md). The thread count is process-wide: another
    thread's BLAS call inside the window runs on one thread, and a count another thread sets meanwhile is kept
    (it is restored only if it still reads one); threads that change BLAS thread counts while dualtensor runs
    products race with it as with each other. OpenBLAS's pthreads builds only (an OpenMP build's count is per
    thread)."""
    fns = _numpy_cblas()
    if not numpy_blas_pthreads() or fns["set_threads"] is None or fns["threads"] is None:
        return None
    with _THREADS_LOCK:  # another caller's restore must not land inside this product
        n = int(fns["threads"]())
        if n == 1:
            return None
        fns["set_threads"](1)
        try:
            return _blas_product(a, b)
        finally:
            if int(fns["threads"]()) == 1:
                fns["set_threads"](n)


def direct_conv(*arrays: Any) -> Any:
    """The direct-convolution library for these arrays (:mod:`dualtensor.onednn` for NumPy float32
    arrays where oneDNN is installed), or None: then conv2d runs as GEMMs (always on CuPy). The same
    library offers :func:`fast_matmul` its products."""
    if not all(a is None or (type(a) is np.ndarray and a.dtype == np.float32) for a in arrays):
        return None
    from . import onednn

    return onednn if onednn.available() else None


def conv_weights(w: Any, groups: int = 1) -> Any:
    """Convolution weights (O, C/G, kh, kw) in the memory layout conv2d reads fastest, the same values: what
    the direct-convolution library prefers where it takes these arrays (oneDNN: a view of (kh, kw, C, O)
    memory, which its forward kernels read without reordering the weights on every call), else C-contiguous
    (the GEMM layouts' weight matrices are views then). :class:`dualtensor.nn.Conv2d` stores its weights so."""
    lib = direct_conv(w)
    if lib is not None:
        return lib.preferred_weights(w, groups)
    return w if w.flags.c_contiguous else get_xp(w).ascontiguousarray(w)


_CBLAS: Any = None  # {"f", "d": ?gemm, "threads", "set_threads", "avx512", "pthreads"} of NumPy's BLAS, or False
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")  # OpenBLAS's kernel sets that use AVX-512


def _numpy_cblas() -> Any:
    """cblas_sgemm/dgemm (ILP64), the thread-count query and the kernel set of the BLAS library NumPy's wheels bundle,
    found among the loaded BLAS libraries (threadpoolctl) under NumPy's install; False when there is
    none (then SciPy's)."""
    global _CBLAS
    if _CBLAS is None:
        _CBLAS = False
        try:
            import ctypes

            from threadpoolctl import threadpool_info

            base = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
            for info in threadpool_info():
                path = info.get("filepath") or ""
                if info.get("user_api") != "blas" or not path.startswith(os.path.join(base, "numpy")):
                    continue
                lib = ctypes.CDLL(path)
                for prefix in ("scipy_", ""):
                    fns = {c: getattr(lib, f"{prefix}cblas_{t}gemm64_", None) for c, t in (("f", "s"), ("d", "d"))}
                    if all(fns.values()):
                        fns["threads"] = getattr(lib, f"{prefix}openblas_get_num_threads64_", None)
                        fns["set_threads"] = getattr(lib, f"{prefix}openblas_set_num_threads64_", None)
                        fns["avx512"] = str(info.get("architecture", "")).lower() in _AVX512_CORES
                        fns["pthreads"] = info.get("threading_layer") == "pthreads"
                        i, i64, p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
                        for c, scalar in (("f", ctypes.c_float), ("d", ctypes.c_double)):
                            fns[c].argtypes = [i, i, i, i64, i64, i64, scalar, p, i64, p, i64, scalar, p, i64]
                            fns[c].restype = None
                        if fns["threads"] is not None:
                            fns["threads"].argtypes, fns["threads"].restype = [], ctypes.c_int
                        if fns["set_threads"] is not None:
                            fns["set_threads"].argtypes, fns["set_threads"].restype = [ctypes.c_int], None
                        _CBLAS = fns
                        return _CBLAS
        except Exception:  # noqa: BLE001 - any failure means: use the portable path
            _CBLAS = False
    return _CBLAS


def numpy_blas_avx512() -> bool:
    """Whether NumPy's BLAS runs AVX-512 kernels (OpenBLAS's core name, from threadpoolctl); False where unknown."""
    fns = _numpy_cblas()
    return bool(fns and fns["avx512"])


def cpu_threads() -> int:
    """The threads NumPy's BLAS may use now (OpenBLAS's own count, so ``OPENBLAS_NUM_THREADS``,
    ``--threads`` and threadpoolctl limits apply); 1 where it cannot be asked. :func:`run_parallel`
    uses as many, so elementwise work follows the same limit as the products."""
    fns = _numpy_cblas()
    return max(1, int(fns["threads"]())) if fns and fns["threads"] is not None else 1


class _Pool:
    """Worker threads for :func:`run_parallel`: one executor of exactly the requested size, started on
    first use, again when the size changes and again in a forked child. Safe to ask from several threads:
    an executor being replaced is not shut down under a caller still using it (its idle threads exit
    once it is collected)."""

    def __init__(self) -> None:
        import threading

        self.lock, self.pid, self.executor, self.size = threading.Lock(), None, None, 0
        self.inside = threading.local()  # set on a worker while it runs a task: nested calls run inline

    def get(self, n: int) -> Any:
        from concurrent.futures import ThreadPoolExecutor

        with self.lock:
            if self.pid != os.getpid() or self.size != n:
                self.pid, self.size = os.getpid(), n
                self.executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dualtensor",
                                                   initializer=self._mark_worker)
            return self.executor

    def _mark_worker(self) -> None:
        self.inside.worker = True

    def on_worker(self) -> bool:
        return getattr(self.inside, "worker", False)


_POOL = _Pool()


def run_parallel(tasks: Iterable[Callable[[], Any]]) -> None:
    """Run independent tasks on up to :func:`cpu_threads` threads, the caller's among them: each task,
    taken in order from ``tasks``, goes to a worker thread, or runs on the calling thread when every worker
    is busy with one task and has another queued; once all are handed out the caller takes back and runs
    the ones no worker has started. For NumPy work that releases the GIL (ufuncs on large arrays) writing
    disjoint outputs; a generator of tasks may prepare each one in order (draw its random bits, say) while
    the earlier ones run. A call from inside a task runs its tasks inline. After a task fails no further
    task starts; the first error is re-raised once every started task has finished (an error raised on the
    calling thread, by a task or by ``tasks`` itself, once every handed-out task has finished)."""
    from concurrent.futures import wait

    n = cpu_threads()
    if n <= 1 or _POOL.on_worker():
        for t in tasks:
            t()
        return
    pool, futures, depth = _POOL.get(n - 1), [], 2 * (n - 1)  # a queued task per worker keeps it busy
    recent: collections.deque = collections.deque(maxlen=depth)  # (future, task) of the last hand-outs
    failed: list = []
    try:
        for t in tasks:
            if failed:
                break
            if sum(not f.done() for f, _ in recent) < depth:
                futures.append(pool.submit(t))
                futures[-1].add_done_callback(lambda f: f.cancelled() or f.exception() is None or failed.append(f))
                recent.append((futures[-1], t))
            else:
                t()
        else:  # all handed out: the caller takes back, newest first, the tasks no worker has started
            for f, t in reversed(recent):
                if not failed and f.cancel():
                    t()
    finally:  # nothing queued starts after a task failed; no handed-out task outlives the call
        if failed:
            for f, _ in recent:
                f.cancel()
        wait(futures)
    for f in futures:
        if not f.cancelled():
            f.result()


BLAS_SPIN_LOG2 = 20  # idle OpenBLAS workers poll for 2**20 TSC cycles (about 0.4 ms), then sleep


def let_idle_blas_threads_sleep(spin_log2: int = BLAS_SPIN_LOG2) -> list[str]:
    """Make the worker threads of every loaded OpenBLAS (NumPy's and SciPy's) sleep after ``2**spin_log2``
    cycles of idle polling instead of OpenBLAS's ``2**28`` (about 0.1 s); returns the libraries changed.

    A spinning worker holds a core for that long after every product, which is harmless while BLAS is
    the only thread pool but takes a core from another pool's threads (oneDNN's OpenMP convolutions and
    matmuls, called between OpenBLAS's products): :mod:`dualtensor.onednn` calls this when it creates
    its first primitive with a fast kernel. Waking a sleeping worker costs more than a short spin, so
    processes that do not run oneDNN keep OpenBLAS's default. OpenBLAS reads its ``OPENBLAS_THREAD_TIMEOUT`` when
    its pool starts, so the pool is restarted here (what OpenBLAS itself does after a fork); a
    ``OPENBLAS_THREAD_TIMEOUT`` set by the user is left in force. The environment is restored afterwards, so new
    processes start with OpenBLAS's default; a forked child inherits the restarted pool and its short spin.
    Call it while no other thread runs BLAS."""
    import ctypes

    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return []
    try:
        from threadpoolctl import threadpool_info

        libs = [i["filepath"] for i in threadpool_info()  # an OpenMP build's threads follow OMP's policy instead
                if i.get("internal_api") == "openblas" and i.get("threading_layer") == "pthreads" and i.get("filepath")]
    except Exception:  # noqa: BLE001 - no threadpoolctl view: nothing to change
        return []
    done = []
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(int(spin_log2))
    try:
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            fns = [getattr(lib, n, None) for n in ("openblas_read_env", "blas_thread_shutdown_", "blas_thread_init")]
            if all(fns):
                for fn in fns:
                    fn()
                done.append(path)
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]  # children start with OpenBLAS's default again
    return done


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _operand(x: Any) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-d array for a row-major cblas call, or None."""
    (r, c), (s0, s1), item = x.shape, x.strides, x.itemsize
    if s1 == item and s0 % item == 0 and s0 // item >= max(1, c):
        return _NO_TRANS, s0 // item
    if s0 == item and s1 % item == 0 and s1 // item >= max(1, r):
        return _TRANS, s1 // item
    if r == 1 and s1 == item or c == 1 and s0 == item or r * c <= 1:
        return (_NO_TRANS, max(1, c)) if c > 1 or r <= 1 else (_TRANS, max(1, r))
    return None


def _cblas_gemm(a: Any, b: Any, out: Any, accumulate: bool) -> bool:
    """out (+)= a @ b by NumPy's BLAS where dtypes and layouts allow; False if not done."""
    kind = out.dtype.char
    if kind not in "fd" or not a.dtype == b.dtype == out.dtype or a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return False
    fns = _numpy_cblas()
    if not fns or np.may_share_memory(out, a) or np.may_share_memory(out, b):  # BLAS must not write its input
        return False
    ops = _operand(a), _operand(b), _operand(out)
    if None in ops or ops[2][0] != _NO_TRANS:
        return False
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return True
    if k == 0:
        if not accumulate:
            out[...] = 0
        return True
    (ta, lda), (tb, ldb), (_, ldc) = ops
    fns[kind](_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
              1.0 if accumulate else 0.0, out.ctypes.data, ldc)
    return True


def _fortran_operand(x: Any) -> tuple[Any, int]:
    """``x^T`` as a (Fortran-ordered matrix, transpose flag) pair for a column-major BLAS call."""
    if x.flags.c_contiguous:
        return x.T, 0
    if x.flags.f_contiguous:
        return x, 1
    return np.ascontiguousarray(x).T, 0


def cholesky(G: Any) -> Any:
    """Lower Cholesky factors of a (batch of) symmetric matrices, never raising: a matrix that is not
    positive definite gets a factor its caller must reject (NaN on NumPy; on CuPy whatever cuSOLVER
    left, which may be finite), so check ``L @ L.T`` against ``G``."""
    xp = get_xp(G)
    if xp is not np:
        return xp.linalg.cholesky(G)  # CuPy does not raise (cupyx.errstate(linalg="ignore"))
    try:
        return np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        flat = G.reshape(-1, *G.shape[-2:])
        out = np.full(flat.shape, np.nan, dtype=np.result_type(G.dtype, np.float32))
        for i, m in enumerate(flat):
            try:
                out[i] = np.linalg.cholesky(m)
            except np.linalg.LinAlgError:
                pass
        return out.reshape(G.shape)


def solve_triangular(L: Any, b: Any, *, lower: bool = True, trans: str = "N") -> Any:
    """Solve ``L x = b`` (``trans="T"``: ``L^T x = b``) for one triangular matrix (scipy / cupyx)."""
    if get_xp(L, b) is np:
        import scipy.linalg

        return scipy.linalg.solve_triangular(L, b, lower=lower, trans=trans, check_finite=False)
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg.solve_triangular(L, b, lower=lower, trans=trans)


def special(xp: types.ModuleType) -> types.ModuleType:
    """scipy.special or cupyx.scipy.special (erf and friends) for the array module ``xp``."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special

    return cupyx.scipy.special
