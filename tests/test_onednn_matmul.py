"""The linear layers' products on oneDNN's matmul (the ``onednn`` extra, backend.fast_matmul): equal to NumPy's
for every shape and layout, taken exactly where oneDNN has a brgemm kernel (AVX-512 CPUs) and the product is
large enough, never for float64, and the linear rules give NumPy's results with it."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dualtensor as dt
from dualtensor import backend, onednn

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason="oneDNN not installed (pip install -e '.[onednn]')")


def _avx512_core() -> bool:
    """The CPU has what oneDNN's f32 brgemm kernels need (AVX-512 F, BW, DQ, VL), and oneDNN may use it."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    if isa != "ALL" and "AVX512" not in isa and "AMX" not in isa:
        return False
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))


def _operand(rng, shape, transposed, strided):
    """A float32 array of ``shape``: C-contiguous, a transposed view, and/or every other row of a larger one."""
    rows, cols = shape[::-1] if transposed else shape
    a = rng.standard_normal((rows * (2 if strided else 1), cols)).astype(np.float32)
    a = a[::2] if strided else a
    return a.T if transposed else a


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(1, 300), n=st.integers(1, 300), ta=st.booleans(), tb=st.booleans(),
       sa=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_equals_numpy(m, k, n, ta, tb, sa, seed):
    rng = np.random.default_rng(seed)
    a, b = _operand(rng, (m, k), ta, sa), _operand(rng, (k, n), tb, False)
    out = onednn.matmul(a, b)
    if not sa:  # dense operands (a row stride of 2k oneDNN may hand to a plain GEMM, then declined)
        assert (out is not None) == _avx512_core()
    if out is not None:
        assert out.shape == (m, n) and out.dtype == np.float32 and out.flags.c_contiguous
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(k) * 4)


def test_declined_without_brgemm_kernels():
    """On a CPU without AVX-512 (here: oneDNN limited to AVX2) its matmul is a plain GEMM: declined."""
    code = ("import numpy as np; from dualtensor import onednn; "
            "a = np.ones((64, 1024), np.float32); print(onednn.matmul(a, a.T) is None)")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_fast_matmul_takes_only_large_float32_products():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 1024)).astype(np.float32)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)
    small = rng.standard_normal((64, 10)).astype(np.float32)
    assert (backend.fast_matmul(big, w.T) is not None) == _avx512_core()
    assert backend.cpu_threads() == 1  # (conftest): the 64 x 1024 x 10 product is NumPy's BLAS's, unchanged
    assert backend.fast_matmul(big, w[:, :10]) is None
    assert backend.fast_matmul(small, small.T) is None  # below OpenBLAS's own threading threshold
    assert backend.fast_matmul(big.astype(np.float64), w.astype(np.float64)) is None


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("blas_avx512", [True, False])
def test_linear_rules_equal_numpy(monkeypatch, threads, blas_avx512):
    """Primal, input and weight tangents, and all three VJPs of linear with oneDNN's products equal NumPy's."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    w = (rng.standard_normal((1024, 784)) * 0.03).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)
    tx = rng.standard_normal((3, 64, 784)).astype(np.float32)
    tw = rng.standard_normal((3, 1024, 784)).astype(np.float32)
    g = rng.standard_normal((64, 1024)).astype(np.float32)
    taken = []
    real = onednn.matmul

    def spy(a, c):
        out = real(a, c)
        if out is not None:
            taken.append((a.shape, c.shape))
        return out
    monkeypatch.setattr(onednn, "matmul", spy)
    monkeypatch.setattr(backend, "cpu_threads", lambda: threads)
    monkeypatch.setattr(backend, "numpy_blas_avx512", lambda: blas_avx512)

    def run():
        y = dt.linear(dt.DualTensor(x, tx), dt.DualTensor(w, tw), b)
        _, pull = dt.vjp(dt.linear, x, w, b)
        return [np.asarray(y.primal), np.asarray(y.tangent), *[np.asarray(v) for v in pull(g)]]
    fast = run()
    assert bool(taken) == _avx512_core()
    if _avx512_core():  # the weight cotangent g^T x stays on NumPy's BLAS only at one thread on AVX-512 kernels
        assert (((1024, 64), (64, 784)) in taken) == (threads > 1 or not blas_avx512)
        assert ((64, 784), (784, 1024)) in taken  # the forward product at any thread count
    monkeypatch.setattr(backend, "_MATMUL_MIN_MACS", 1 << 62)
    taken.clear()
    plain = run()
    assert not taken
    for f, p in zip(fast, plain):
        np.testing.assert_allclose(f, p, rtol=2e-5, atol=2e-5 * float(np.abs(p).max()))


def test_switched_off_declines():
    code = ("import numpy as np; from dualtensor import onednn, backend; a = np.ones((64, 1024), np.float32); "
            "print(onednn.matmul(a, a.T) is None, backend.fast_matmul(a, a.T) is None)")
    env = dict(os.environ, DUALTENSOR_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_numpy_blas_kernel_set_is_read_from_openblas():
    """numpy_blas_avx512 reports the kernel set OpenBLAS itself names (threadpoolctl's 'architecture')."""
    from threadpoolctl import threadpool_info

    names = [str(i.get("architecture", "")).lower() for i in threadpool_info()
             if i.get("internal_api") == "openblas" and "numpy" in (i.get("filepath") or "")]
    if not names:
        pytest.skip("NumPy's BLAS is not its bundled OpenBLAS here")
    assert backend.numpy_blas_avx512() == (names[0] in ("skylakex", "cooperlake", "sapphirerapids"))


def test_small_products_run_on_one_blas_thread_beside_onednn(monkeypatch):
    """Where oneDNN takes the float32 products, one it declines for size but OpenBLAS would split over its threads
    is computed with NumPy's BLAS held at one thread, and the count is restored (also after an error, and not
    over a count another thread set meanwhile); elsewhere, and at one thread, it is left to the caller."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 1024)).astype(np.float32)
    w = rng.standard_normal((1024, 10)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):  # the real OpenBLAS calls
        threads = backend.cpu_threads()
        out = backend.fast_matmul(a, w)
        if onednn.runs_matmul() and threads == 2 and backend.numpy_blas_pthreads():
            np.testing.assert_allclose(out, a @ w, rtol=1e-5, atol=1e-4)
        else:
            assert out is None
        assert backend.fast_matmul(a[:16], w) is None  # 164k multiply-adds: OpenBLAS keeps it on one thread
        assert backend.cpu_threads() == threads

    calls = []
    now = [4]
    fake = {"threads": lambda: now[0], "set_threads": lambda n: (calls.append(n), now.__setitem__(0, n)),
            "pthreads": True}
    monkeypatch.setattr(backend, "_numpy_cblas", lambda: fake)
    monkeypatch.setattr(onednn, "runs_matmul", lambda: True)
    seen = []

    def product(x, y):
        seen.append(now[0])
        return x.dot(y)
    monkeypatch.setattr(backend, "_blas_product", product)
    np.testing.assert_allclose(backend.fast_matmul(a, w), a.dot(w), rtol=1e-6)
    assert seen == [1] and calls == [1, 4] and now[0] == 4

    def boom(x, y):
        raise MemoryError("no room")
    monkeypatch.setattr(backend, "_blas_product", boom)
    with pytest.raises(MemoryError):
        backend.fast_matmul(a, w)
    assert now[0] == 4

    def other_thread_sets_three(x, y):  # a count set by someone else inside the window is kept
        now[0] = 3
        return x.dot(y)
    monkeypatch.setattr(backend, "_blas_product", other_thread_sets_three)
    backend.fast_matmul(a, w)
    assert now[0] == 3
    now[0] = 1
    calls.clear()
    assert backend.fast_matmul(a, w) is None and not calls  # one thread already: nothing to hold
    monkeypatch.setattr(onednn, "runs_matmul", lambda: False)
    now[0] = 4
    assert backend.fast_matmul(a, w) is None and not calls
