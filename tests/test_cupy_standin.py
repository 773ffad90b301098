"""The CuPy stand-in keeps CuPy's observable contract (what tests/cupy_standin promises), so code that
passes on it meets the differences real CuPy has from NumPy."""
from __future__ import annotations

import numpy as np
import pytest

import conftest
import cupy_standin

if conftest.REAL_GPU:  # the suite runs on real CuPy then; never swap it for the stand-in mid-session
    pytest.skip("a GPU is present: the CuPy cases run on real CuPy", allow_module_level=True)
cp = cupy_standin.install()


def test_it_is_not_numpy_and_does_not_convert_implicitly():
    x = cp.asarray(np.arange(3.0))
    assert not isinstance(x, np.ndarray) and type(x).__module__ == "cupy"
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    for mixed in (lambda: x + np.ones(3), lambda: np.ones(3) + x, lambda: cp.add(x, np.ones(3))):
        with pytest.raises(TypeError, match="Unsupported type"):
            mixed()
    assert (x * np.float32(2)).dtype == np.float64 and type(x * 2.0) is type(x)  # NumPy scalars mix in


def test_only_cupys_names_exist():
    assert "cholesky" in dir(cp.linalg)
    with pytest.raises(AttributeError):
        cp.lib.stride_tricks.broadcast_arrays  # NumPy has it there, CuPy does not
    with pytest.raises(AttributeError):
        cp.asarray(np.ones(2)).setflags  # NumPy's ndarray has it, CuPy's does not
    assert not hasattr(cp.asarray(np.ones(2)).flags, "writeable")
    g = cp.random.default_rng(0)
    assert type(g.standard_normal((2,), dtype=np.float32)) is cp.ndarray
    with pytest.raises(AttributeError):
        g.permutation(3)  # not a method of CuPy's Generator
    assert callable(g.bit_generator.state)  # XORWOW's state is a method, not NumPy's settable dict
    # NumPy functions dispatch to it only for CuPy's names
    assert type(np.sum(cp.asarray(np.ones(3)))) is cp.ndarray
    with pytest.raises(TypeError):
        np.insert(cp.asarray(np.ones(3)), 0, 1.0)  # CuPy has no insert


def test_results_indices_views_and_linalg_behave_as_on_cupy():
    x = cp.asarray(np.arange(5.0))
    s = x.sum()
    assert type(s) is cp.ndarray and s.shape == ()  # a 0-d array, never a NumPy scalar
    assert x[cp.asarray(np.array([6, -6]))].get().tolist() == [1.0, 4.0]  # out-of-range indices wrap
    b = cp.broadcast_to(cp.asarray(np.zeros(3)), (2, 3))
    b[0, 1] = 7.0  # writable, and one memory for every broadcast copy
    assert b.get()[1, 1] == 7.0
    L = cp.linalg.cholesky(cp.asarray(np.array([[1.0, 2.0], [2.0, 1.0]])))  # indefinite: no error
    assert np.isfinite(L.get()).all() and not np.allclose(L.get() @ L.get().T, [[1, 2], [2, 1]])


def test_every_host_conversion_is_counted():
    x = cp.asarray(np.arange(4.0))
    with cupy_standin.counting() as n:
        y = (x * 2 + 1).sum()  # device work only
    assert n[0] == 0
    with cupy_standin.counting() as n:
        float(y), int(x[0]), bool(x[1]), x.get(), x.tolist(), x[2].item(), cp.asnumpy(x), repr(x)
    assert n[0] == 8
    with cupy_standin.counting() as n:  # results whose size depends on the data read a count
        x[x > 1], cp.nonzero(x), cp.argwhere(x), cp.unique(x)
    assert n[0] == 4
