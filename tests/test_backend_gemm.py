"""backend.gemm: out = a @ b or out += a @ b into a given array, on every operand layout."""
import numpy as np
import pytest

from dualtensor.backend import gemm


def _operands(xp, dtype, layout_a, layout_b, rng):
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((5, 6)).astype(dtype)
    lay = {"c": lambda m: m, "f": np.asfortranarray, "strided": lambda m: np.repeat(m, 2, axis=1)[:, ::2]}
    return xp.asarray(lay[layout_a](a)), xp.asarray(lay[layout_b](b)), a, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout_a", ["c", "f", "strided"])
@pytest.mark.parametrize("layout_b", ["c", "f", "strided"])
def test_gemm_overwrites_and_accumulates(xp, dtype, layout_a, layout_b):
    rng = np.random.default_rng(0)
    a, b, a_np, b_np = _operands(xp, dtype, layout_a, layout_b, rng)
    start = rng.standard_normal((7, 6)).astype(dtype)
    out = xp.asarray(start.copy())
    assert gemm(a, b, out) is out
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xp.asnumpy(out) if xp is not np else out, a_np @ b_np, **tol)
    gemm(a, b, out, accumulate=True)
    np.testing.assert_allclose(xp.asnumpy(out) if xp is not np else out, 2 * (a_np @ b_np), **tol)


def test_gemm_writes_row_blocks_in_place():
    """Row blocks of a C-contiguous matrix are operands and targets without copies (the shifted
    convolution relies on it): only the addressed rows of ``out`` change."""
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((20, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    out = np.full((20, 3), 7.0, np.float32)
    gemm(rows[5:15], w, out[2:12], accumulate=True)
    want = np.full((20, 3), 7.0, np.float32)
    want[2:12] += rows[5:15] @ w
    np.testing.assert_allclose(out, want, rtol=1e-5)
    gemm(rows[5:15].T, out[2:12], w.copy())  # a transposed row block (Fortran-ordered) as left operand


def test_gemm_mixed_dtypes_fall_back_to_matmul():
    a = np.ones((3, 2), np.float32)
    b = np.ones((2, 4), np.float64)
    out = np.zeros((3, 4), np.float64)
    gemm(a, b, out, accumulate=True)
    np.testing.assert_array_equal(out, np.full((3, 4), 2.0))


@pytest.mark.parametrize("path", ["numpy-blas", "fallback"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_into_strided_targets_by_both_paths(monkeypatch, path, dtype):
    """NumPy's own BLAS (cblas with leading dimensions) and the portable fallback (SciPy's BLAS, matmul)
    give the same results, writing only the addressed block of a larger array."""
    import dualtensor.backend as B

    if path == "numpy-blas":
        if not B._numpy_cblas():
            pytest.skip("this NumPy bundles no ILP64 OpenBLAS")
    else:
        monkeypatch.setattr(B, "_CBLAS", False)
    rng = np.random.default_rng(2)
    a = np.asfortranarray(rng.standard_normal((9, 4)).astype(dtype))    # a transposed operand
    b = rng.standard_normal((4, 12)).astype(dtype)[:, ::2]                # no contiguous axis: copied
    c = rng.standard_normal((6, 8)).astype(dtype)[1:5, 2:7]               # rows contiguous, ld 8
    for acc in (False, True):
        big = np.full((12, 10), 3.0, dtype)
        want = big.copy()
        want[2:11, 1:7] = (3.0 if acc else 0.0) + a @ b
        gemm(a, b, big[2:11, 1:7], accumulate=acc)
        np.testing.assert_allclose(big, want, rtol=1e-5, atol=1e-5)
    out = np.zeros((9, 5), dtype)
    gemm(a[:, :4], c, out)
    np.testing.assert_allclose(out, a @ c, rtol=1e-5, atol=1e-5)


def test_gemm_uses_numpys_blas_where_present():
    """On NumPy wheels (ILP64 OpenBLAS) the BLAS that NumPy itself calls is found, so one thread pool
    serves every product."""
    import dualtensor.backend as B

    from threadpoolctl import threadpool_info

    numpy_blas = [i for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")
                  and i.get("internal_api") == "openblas"]
    if not numpy_blas:
        pytest.skip("NumPy is not linked to a bundled OpenBLAS here")
    assert B._numpy_cblas()


def test_gemm_into_its_own_operand_is_right():
    """out overlapping an operand goes the safe way (matmul copies), not through BLAS in place."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    want = x @ x
    gemm(x, x, x)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
