"""The float32 Box-Muller transform: the compiled (numba) and NumPy runs agree bit for bit, both are
accurate to a few float32 ulps, and the switch to NumPy works."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dualtensor.fgrad import box_muller as B


def _words(m: int, seed: int = 0) -> np.ndarray:
    """2m raw words with the edge cases first: the smallest and largest radius and every quadrant's ends."""
    w = np.random.default_rng(seed).integers(0, 2**32, size=2 * m, dtype=np.uint32)
    edges = [0, 0xFFFFFFFF, 0x1FF, 0xFFFFFE00, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0x80000000, 0xBFFFFFFF,
             0xC0000000]
    for i, r in enumerate(edges):
        for j, t in enumerate(edges):
            w[i * len(edges) + j], w[m + i * len(edges) + j] = r, t
    return w


def _reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same pairs in float64 from the same uniforms (radius word -> U, angle word -> quadrant + offset)."""
    m = len(w) // 2
    wr, wt = w[:m].astype(np.int64), w[m:].astype(np.int64)
    u = 1.0 - (wr >> 9) * 2.0**-23
    r = np.sqrt(-2.0 * np.log(u))
    x = (((wt << 2) & 0xFFFFFFFF) >> 9) * 2.0**-23 - 0.5
    theta = (wt >> 30) * (math.pi / 2) + x * float(np.float32(math.pi / 2))
    return r * np.cos(theta), r * np.sin(theta)


def _run(fn, w):
    m = w.shape[-1] // 2
    out = np.empty(w.shape, np.float32)
    kept = w.copy()
    fn(w, out)
    assert np.array_equal(w, kept)  # the words are not modified
    return out[..., :m], out[..., m:]


def _compiled(w, out):
    B.compiled()(w.reshape(-1, w.shape[-1]), out.reshape(-1, w.shape[-1]))


@pytest.mark.parametrize("m", [1, 100, 2048 * 3 + 5, B._PASS_BLOCK + 1, 70_001])
def test_compiled_and_numpy_give_the_same_bits(m):
    pytest.importorskip("numba", reason="the compiled transform needs the numba extra")
    if B.compiled() is None:
        pytest.skip("DUALTENSOR_NUMBA=0 is set")
    w = _words(m) if m >= 100 else np.random.default_rng(1).integers(0, 2**32, 2 * m, np.uint32)
    a, b = _run(_compiled, w), _run(B.transform_arrays, w)
    for x, y in zip(a, b):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


def test_rows_are_transformed_each_on_its_own():
    """(R, 2m) words: row r's outputs are those of row r alone, compiled or not (the keyed streams' chunks)."""
    w = np.random.default_rng(2).integers(0, 2**32, (5, 2 * 4096), np.uint32)
    fns = [B.transform, B.transform_arrays] + ([_compiled] if B.compiled() else [])
    for fn in fns:
        z1, z2 = _run(fn, w)
        for r in (0, 3):
            one = _run(B.transform_arrays, w[r])
            assert np.array_equal(z1[r], one[0]) and np.array_equal(z2[r], one[1])


@pytest.mark.parametrize("path", ["numpy", "transform"])
def test_pairs_are_within_a_few_ulps_of_float64(path):
    w = _words(50_000, seed=3)
    z1, z2 = _run(B.transform_arrays if path == "numpy" else B.transform, w)
    for got, ref in zip((z1, z2), _reference(w)):
        ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        err = np.abs(got - ref) / np.maximum(ulp, np.spacing(np.float32(1e-30)))
        assert err.max() <= 4, err.max()
    assert np.abs(np.concatenate([z1, z2])).max() <= math.sqrt(-2 * math.log(2.0**-23)) + 1e-5


def test_every_quadrant_is_drawn_evenly():
    z1, z2 = _run(B.transform, np.random.default_rng(5).integers(0, 2**32, 2 * 200_000, np.uint32))
    counts = np.bincount((z1 < 0) * 2 + (z2 < 0), minlength=4)
    expected = len(z1) / 4
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), counts


def test_the_switch_turns_the_compiled_transform_off():
    code = "from dualtensor.fgrad import box_muller as B; print(B.compiled() is None)"
    env = dict(os.environ, DUALTENSOR_NUMBA="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
