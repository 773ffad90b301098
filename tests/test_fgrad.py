"""Forward gradients: samplers, aggregators, weight perturbation vs its reverse-mode simulation, diagnostics."""
import math
import warnings

import numpy as np
import pytest

import dualtensor as dt
from dualtensor.fgrad import aggregators as A
from dualtensor.fgrad import diagnostics as D
from dualtensor.fgrad import samplers as S
from dualtensor.fgrad.weight import forward_gradient, simulated_forward_gradient, tangent_tree

ALL_SAMPLERS = {
    "normal": {}, "rademacher": {}, "orthonormal": {}, "basis": {},
    "cone": {"alpha": 0.7}, "varying_length": {"L": 10.0},
}
AGGS = ["single", "sum", "mean", "normalized", "projection"]


def _to_np(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


# ------------------------------------------------------------------------------------------ samplers

@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sampler_shapes_dtypes_and_seeding(xp, name, dtype):
    fn = S.get_sampler(name, **ALL_SAMPLERS[name])
    v = fn(3, (4, 5), 7, dtype=dtype, xp=xp)
    assert v.shape == (3, 4, 5) and v.dtype == dtype and type(v) is xp.ndarray
    assert np.all(np.isfinite(_to_np(v)))
    np.testing.assert_array_equal(_to_np(v), _to_np(fn(3, (4, 5), 7, dtype=dtype, xp=xp)))  # same seed
    assert not np.array_equal(_to_np(v), _to_np(fn(3, (4, 5), 8, dtype=dtype, xp=xp)))
    b = fn(3, (4, 5), 7, dtype=dtype, xp=xp, batch=6)
    assert b.shape == (3, 6, 4, 5) and b.dtype == dtype
    # a Generator's state advances: two draws differ, a re-seeded generator repeats them
    g1, g2 = S.as_generator(11, xp), S.as_generator(11, xp)
    a1, a2 = fn(3, 20, g1, dtype=dtype), fn(3, 20, g1, dtype=dtype)
    assert not np.array_equal(_to_np(a1), _to_np(a2))
    np.testing.assert_array_equal(_to_np(a1), _to_np(fn(3, 20, g2, dtype=dtype)))


def test_default_dtype_is_package_default():
    assert S.normal(2, 3, 0).dtype == dt.get_default_dtype()


@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
def test_per_sample_independent_vs_shared(name):
    fn = S.get_sampler(name, **ALL_SAMPLERS[name])
    ind = fn(4, (4, 6), 0, batch=5)
    assert not any(np.array_equal(ind[:, 0], ind[:, j]) for j in range(1, 5))
    sh = fn(4, (4, 6), 0, batch=5, shared=True)
    assert sh.shape == (4, 5, 4, 6) and sh.strides[1] == 0  # one draw broadcast over the batch
    for j in range(5):
        np.testing.assert_array_equal(sh[:, j], sh[:, 0])
    np.testing.assert_array_equal(sh[:, 0], fn(4, (4, 6), 0))  # shared draw == an unbatched draw


def test_normal_moments():
    v = S.normal(4, 50_000, 0, dtype=np.float32).astype(np.float64).ravel()
    se = 1 / math.sqrt(v.size)
    assert abs(v.mean()) < 5 * se and abs(v.var() - 1) < 5 * math.sqrt(2) * se


def test_normal_float32_box_muller_distribution():
    """float32 normals (Box-Muller over 23-bit uniforms): N(0, 1) moments, KS distance, tails capped at ~5.65."""
    from scipy import special, stats

    v = S.normal(4, 250_001, 11, dtype=np.float32)  # odd size: the last Box-Muller pair overhangs
    assert v.dtype == np.float32 and v.shape == (4, 250_001) and np.all(np.isfinite(v))
    z = v.astype(np.float64).ravel()
    n = z.size
    se = 1 / math.sqrt(n)
    assert abs(z.mean()) < 5 * se and abs(z.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.skew(z)) < 5 * math.sqrt(6) * se and abs(stats.kurtosis(z)) < 5 * math.sqrt(24) * se
    zs = np.sort(z)  # Kolmogorov-Smirnov distance to the standard normal CDF
    cdf = special.ndtr(zs)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)  # the 1% critical value
    assert np.abs(z).max() <= math.sqrt(-2 * math.log(2.0**-23)) + 1e-5
    flat = z[: n - 1]
    assert abs(np.mean(flat * z[1:])) < 5 * se  # neighbours (the two halves of a chunk) uncorrelated
    chunk = S._BM_CHUNK  # the cos and sin halves of one chunk come from the same pairs: uncorrelated too
    assert abs(np.mean(z[:chunk] * z[chunk:2 * chunk])) < 5 / math.sqrt(chunk)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rademacher_values_and_balance(dtype):
    v = S.rademacher(8, 300_001, 3, dtype=dtype)  # odd size: the last chunk and word are partial
    assert set(np.unique(v).tolist()) == {-1.0, 1.0}
    n = v.size
    assert abs(v.mean(dtype=np.float64)) < 5 / math.sqrt(n)  # fair sign, 5 standard errors
    flat = v.ravel().astype(np.float64)
    assert abs(np.mean(flat[1:] * flat[:-1])) < 5 / math.sqrt(n)  # neighbouring bits uncorrelated
    words = flat[: flat.size // 64 * 64].reshape(-1, 64)  # no bit position of a 64-bit word is biased
    assert np.all(np.abs(words.mean(axis=0)) < 5 / math.sqrt(words.shape[0]))


def test_rademacher_batched_shared_float64():
    v = S.rademacher(3, (2, 2), 1, dtype=np.float64, batch=4, shared=True)
    assert v.shape == (3, 4, 2, 2) and set(np.unique(v).tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_orthonormal(dtype, tol):
    v = S.orthonormal(6, 10, 0, dtype=dtype)
    np.testing.assert_allclose(v @ v.T, np.eye(6), atol=tol)
    vb = S.orthonormal(6, (2, 5), 0, dtype=dtype, batch=3).reshape(6, 3, 10)
    np.testing.assert_allclose(np.einsum("kbn,jbn->bkj", vb, vb), np.broadcast_to(np.eye(6), (3, 6, 6)), atol=tol)
    full = S.orthonormal(10, 10, 1, dtype=np.float64)  # k = n: an orthogonal matrix
    np.testing.assert_allclose(full.T @ full, np.eye(10), atol=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        S.orthonormal(11, 10, 0)


def test_orthonormal_is_rotation_invariant_in_distribution():
    # Haar: E[v v^T] = (k/n) I per tangent set; check the diagonal average is flat
    v = S.orthonormal(2, 4, 0, dtype=np.float64, batch=20_000)
    m = np.einsum("kbn,kbm->nm", v, v) / 20_000
    np.testing.assert_allclose(m, 0.5 * np.eye(4), atol=0.03)


def test_basis_distinct_unit_vectors():
    v = S.basis(5, 8, 0, dtype=np.float64)
    assert np.all(v.sum(axis=1) == 1) and np.all((v == 0) | (v == 1))
    assert len(set(np.argmax(v, axis=1).tolist())) == 5
    vb = S.basis(8, (2, 4), 1, batch=50).reshape(8, 50, 8)
    idx = np.argmax(vb, axis=2)  # (k, B)
    assert all(len(set(idx[:, b].tolist())) == 8 for b in range(50))  # k = n: a permutation per sample
    vb = S.basis(3, 100, 2, batch=40)
    idx = np.argmax(vb, axis=2)
    assert all(len(set(idx[:, b].tolist())) == 3 for b in range(40))
    assert len({tuple(sorted(idx[:, b])) for b in range(40)}) > 30  # samples choose independently
    with pytest.raises(ValueError, match="distinct"):
        S.basis(9, 8, 0)


@pytest.mark.parametrize("alpha_deg", [0.0, 15.0, 45.0, 90.0, 150.0])
def test_cone_angles_exact(alpha_deg):
    alpha = math.radians(alpha_deg)
    v = S.cone(6, 20, 3, alpha=alpha, dtype=np.float64, batch=4)
    u = v / np.linalg.norm(v, axis=-1, keepdims=True)
    cos = np.einsum("kbn,bn->kb", u[1:], u[0])
    np.testing.assert_allclose(cos, math.cos(alpha), atol=1e-12)
    g = S.normal(6, 20, 3, dtype=np.float64, batch=4)  # the same underlying Gaussian draw
    np.testing.assert_array_equal(v[0], g[0])  # v1 unchanged
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), np.linalg.norm(g, axis=-1), rtol=1e-12)  # lengths kept
    vn = S.cone(6, 20, 3, alpha=alpha, normalize=True, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(vn, axis=-1), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        S.cone(2, 4, 0, alpha=4.0)


def test_cone_float32_angle():
    v = S.cone(4, 1000, 0, alpha=math.radians(30), dtype=np.float32)
    assert v.dtype == np.float32
    u = v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(u[1:] @ u[0], math.cos(math.radians(30)), atol=1e-5)


def test_varying_length():
    v = S.varying_length(5, 30, 0, L=16.0, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), [1, 2, 4, 8, 16], rtol=1e-12)
    r = S.varying_length(5, 30, 0, L=16.0, random_lengths=True, batch=7)
    lens = np.linalg.norm(r, axis=-1)
    assert np.all((lens >= 1 - 1e-5) & (lens <= 16 + 1e-4)) and np.unique(lens.round(4)).size > 5
    with pytest.raises(ValueError, match="L must be"):
        S.varying_length(2, 3, 0, L=0.5)


def test_supplied_tangents_validated():
    V = np.ones((3, 4), np.float32)
    fn = S.get_sampler(V)
    assert fn(3, 4, dtype=np.float32) is V
    with pytest.raises(ValueError, match=r"shape \(k, \*shape\) = \(3, 5\)"):
        fn(3, 5)
    with pytest.raises(ValueError, match="shape"):
        fn(2, 4)
    with pytest.raises(TypeError, match="float64 is required"):
        fn(3, 4, dtype=np.float64)
    with pytest.raises(TypeError, match="floating"):
        S.validate_tangents(np.ones((3, 4), int), 3, 4)
    with pytest.raises(ValueError, match=r"\(k, B, \*shape\)"):
        S.validate_tangents(V, 3, 4, batch=2)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        S.get_sampler("nope")
    with pytest.raises(ValueError, match="unknown aggregator"):
        A.get_aggregator("nope")
    with pytest.raises(ValueError, match="positive integer"):
        S.normal(0, 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        S.normal(2, 3, dtype=np.int32)


# --------------------------------------------------------------------------------------- aggregators

def _problem(k, n, B=None, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    if B is None:
        grad = rng.standard_normal(n).astype(dtype)
        V = rng.standard_normal((k, n)).astype(dtype)
        return grad, V, V @ grad
    grad = rng.standard_normal((B, n)).astype(dtype)
    V = rng.standard_normal((k, B, n)).astype(dtype)
    return grad, V, np.einsum("kbn,bn->kb", V, grad)


def _reference(name, d, V):
    if name == "single":
        return d[0] * V[0]
    if name == "sum":
        return d @ V
    if name == "mean":
        return d @ V / len(d)
    if name == "normalized":
        return (d / np.sum(V * V, axis=1)) @ V
    return V.T @ np.linalg.solve(V @ V.T, d)


@pytest.mark.parametrize("k", [5, 1])
@pytest.mark.parametrize("name", AGGS)
def test_aggregators_match_direct_formulas(name, k):
    grad, V, d = _problem(k, 12)
    np.testing.assert_allclose(A.get_aggregator(name)(d, V), _reference(name, d, V), rtol=1e-10, atol=1e-12)
    # per-sample: equal to a Python loop over samples (k = 1 takes its own product path)
    gradb, Vb, db = _problem(k, 12, B=7, seed=1)
    gb = A.get_aggregator(name)(db, Vb)
    assert gb.shape == (7, 12)
    loop = np.stack([_reference(name, db[:, b], Vb[:, b]) for b in range(7)])
    np.testing.assert_allclose(gb, loop, rtol=1e-9, atol=1e-12)
    # shared tangents (broadcast view) == the same tangents copied per sample
    Vs = np.broadcast_to(V[:, None], (k, 7, 12))
    ds = np.einsum("kbn,bn->kb", Vs, gradb)
    np.testing.assert_allclose(A.get_aggregator(name)(ds, Vs), A.get_aggregator(name)(ds, np.ascontiguousarray(Vs)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", AGGS)
def test_aggregators_keep_feature_shape_and_float32(name):
    rng = np.random.default_rng(2)
    V = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)  # (k, B, *feat)
    d = rng.standard_normal((4, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = A.get_aggregator(name)(d, V)
    assert g.shape == (3, 2, 5) and g.dtype == np.float32
    g64 = A.get_aggregator(name)(d.astype(np.float64), V.astype(np.float64))
    np.testing.assert_allclose(g, g64, rtol=2e-4, atol=1e-5)
    g1 = A.get_aggregator(name)(d[:, 0], V[:, 0])
    assert g1.shape == (2, 5) and g1.dtype == np.float32


def test_aggregator_shape_errors():
    with pytest.raises(ValueError, match="do not match"):
        A.mean(np.ones(3), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"shape \(k,\) or \(k, B\)"):
        A.mean(np.ones((3, 2, 2)), np.ones((3, 2, 2, 5)))


def test_mean_is_unbiased_with_gaussian_tangents():
    n, k, N = 6, 3, 40_000
    grad = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    V = S.normal(k, n, 0, dtype=np.float64, batch=N)
    d = np.einsum("kbn,n->kb", V, grad)
    est = A.mean(d, V).mean(axis=0)
    # Var[(v.g) v_j] = |g|^2 + g_j^2 for v ~ N(0, I); the mean of k and N draws divides by kN
    se = np.sqrt((grad @ grad + grad**2) / (k * N))
    assert np.all(np.abs(est - grad) < 5 * se), (est - grad) / se
    # normalized tangents are biased towards |g|/n-scaled values: E = g/n, not g (sanity of the formula)
    est_n = A.normalized(d, V).mean(axis=0) * n / k
    assert np.all(np.abs(est_n - grad) < 10 * se)


def test_projection_exact_for_k_equal_n_and_spanning_k_greater_n():
    grad, V, d = _problem(8, 8, seed=3)
    np.testing.assert_allclose(A.projection(d, V), grad, rtol=1e-9)
    grad, V, d = _problem(12, 8, seed=4)  # k > n, spans R^n: rank-deficient Gram -> least squares, exact
    with pytest.warns(RuntimeWarning, match="ill-conditioned or singular"):
        g = A.projection(d, V)
    np.testing.assert_allclose(g, grad, rtol=1e-8)


def test_projection_rank_deficient_warns_and_returns_least_squares():
    rng = np.random.default_rng(5)
    grad = rng.standard_normal(10)
    base = rng.standard_normal((3, 10))
    V = np.concatenate([base, base[:1] * 2.0, base[1:2] + base[2:3]])  # rank 3, k = 5
    d = V @ grad
    with pytest.warns(RuntimeWarning, match=r"Gram matrix .*(Cholesky failed|condition estimate).*float64"):
        g = A.projection(d, V)
    np.testing.assert_allclose(g, np.linalg.lstsq(V, d, rcond=None)[0], rtol=1e-8, atol=1e-10)
    q, _ = np.linalg.qr(base.T)  # P_U grad with an orthonormal basis of the span
    np.testing.assert_allclose(g, q @ (q.T @ grad), rtol=1e-8, atol=1e-10)
    # batched: only the bad sample falls back, the message says how many
    Vb = rng.standard_normal((5, 6, 10))
    Vb[:, 2] = V
    db = np.einsum("kbn,n->kb", Vb, grad)
    with pytest.warns(RuntimeWarning, match="samples"):
        gb = A.projection(db, Vb)
    np.testing.assert_allclose(gb[2], g, rtol=1e-8, atol=1e-10)
    for b in (0, 1, 3, 4, 5):
        np.testing.assert_allclose(gb[b], _reference("projection", db[:, b], Vb[:, b]), rtol=1e-9)


def test_projection_ill_conditioned_float32_limit_and_override():
    assert A.cond_limit(np.float64) == pytest.approx(1e12)
    assert 1e5 < A.cond_limit(np.float32) < 1e6
    grad, V, d = _problem(3, 6, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # well-conditioned: Cholesky path, no warning
        g = A.projection(d, V)
    with pytest.warns(RuntimeWarning, match="condition estimate .* > limit 1"):
        g_ls = A.projection(d, V, cond_max=1.0)  # forced fallback agrees with the Cholesky solve
    np.testing.assert_allclose(g_ls, g, rtol=1e-10)
    w = np.random.default_rng(66).standard_normal(6)
    V[2] = V[1] + 1e-7 * w  # cond(G) ~ 1e14 > 1e12
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        A.projection(V @ grad, V)
    V32 = V.astype(np.float32)
    V32[2] = V32[1] + 1e-3 * w.astype(np.float32)  # cond(G) ~ 1e6 > 2e5 for float32, fine for float64
    with pytest.warns(RuntimeWarning, match="float32"):
        A.projection(V32 @ grad.astype(np.float32), V32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.projection(V32.astype(np.float64) @ grad, V32.astype(np.float64))


def test_projection_scale_chi_ratio():
    for n, k in [(5, 2), (64, 16), (3, 3)]:
        direct = (math.gamma((n + 1) / 2) / math.gamma(n / 2)) / (math.gamma((k + 1) / 2) / math.gamma(k / 2))
        assert A.chi_mean_ratio(n, k) == pytest.approx(direct, rel=1e-12)
    r = A.chi_mean_ratio(10**7, 16)  # stable where Gamma overflows
    assert math.isfinite(r) and r == pytest.approx(math.sqrt(10**7 / 16), rel=0.02)
    grad, V, d = _problem(4, 30, seed=7)
    np.testing.assert_allclose(A.projection(d, V, scale=True), A.chi_mean_ratio(30, 4) * A.projection(d, V))
    # for Gaussian tangents the scaled projection has about the gradient's norm on average
    grad = np.ones(64)
    Vb = S.normal(16, 64, 0, dtype=np.float64, batch=2000)
    g = A.projection(np.einsum("kbn,n->kb", Vb, grad), Vb, scale=True)
    assert np.mean(np.linalg.norm(g, axis=1)) / 8.0 == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("sampler", ["normal", "rademacher", "orthonormal", "basis", "cone", "varying_length"])
@pytest.mark.parametrize("name", AGGS)
def test_every_aggregator_is_a_descent_direction(sampler, name):
    kw = {"alpha": 0.4} if sampler == "cone" else {"L": 5.0} if sampler == "varying_length" else {}
    V = S.get_sampler(sampler, **kw)(4, 16, 9, dtype=np.float64, batch=300)
    grad = np.random.default_rng(9).standard_normal((300, 16))
    d = np.einsum("kbn,bn->kb", V, grad)
    g = A.get_aggregator(name)(d, V)
    assert np.all(np.einsum("bn,bn->b", g, grad) >= -1e-12)  # within 90 degrees, always


def test_projection_has_best_cosine_and_cone_invariance():
    grad = np.random.default_rng(10).standard_normal((200, 32))
    cos = {}
    for a in (15, 45, 90):
        V = S.cone(8, 32, 11, alpha=math.radians(a), dtype=np.float64, batch=200)
        d = np.einsum("kbn,bn->kb", V, grad)
        proj, mean = A.projection(d, V), A.mean(d, V)
        c_p = D.cosine_similarity(proj, grad, batched=True)
        c_m = D.cosine_similarity(mean, grad, batched=True)
        assert np.all(c_p >= c_m - 1e-12)  # P_U grad is the closest direction to grad within U
        cos[a] = (proj, mean, c_m)
    # same underlying draws -> same span for every alpha -> identical projections; the mean changes
    np.testing.assert_allclose(cos[15][0], cos[90][0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cos[45][0], cos[90][0], rtol=1e-8, atol=1e-10)
    assert not np.allclose(cos[15][1], cos[90][1])
    assert cos[15][2].mean() < cos[90][2].mean() - 0.05  # narrow cones hurt the mean


def test_projection_and_normalized_are_length_invariant():
    grad = np.random.default_rng(12).standard_normal((50, 20))
    V1 = S.varying_length(5, 20, 13, L=1.0, dtype=np.float64, batch=50)
    V2 = S.varying_length(5, 20, 13, L=100.0, dtype=np.float64, batch=50)  # same directions, other lengths
    for name, invariant in [("projection", True), ("normalized", True), ("mean", False)]:
        g1 = A.get_aggregator(name)(np.einsum("kbn,bn->kb", V1, grad), V1)
        g2 = A.get_aggregator(name)(np.einsum("kbn,bn->kb", V2, grad), V2)
        assert np.allclose(g1, g2, rtol=1e-8, atol=1e-10) == invariant, name


# ------------------------------------------------------------------------------ weight perturbation

def _mlp_params(rng, dtype):
    return {"l1": {"w": rng.standard_normal((5, 8)).astype(dtype) * 0.5, "b": np.zeros(8, dtype)},
            "l2": [rng.standard_normal((8, 3)).astype(dtype) * 0.5, np.full(3, 0.1, dtype)]}


def _mlp_loss(x, y):
    def f(p):
        h = dt.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
        out = h @ p["l2"][0] + p["l2"][1]
        r = out - y
        return dt.sum(r * r) * (1.0 / len(x))
    return f


@pytest.mark.parametrize("aggregate", AGGS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_forward_gradient_equals_simulated(aggregate, dtype, tol):
    rng = np.random.default_rng(0)
    params = _mlp_params(rng, dtype)
    x, y = rng.standard_normal((16, 5)).astype(dtype), rng.standard_normal((16, 3)).astype(dtype)
    f = _mlp_loss(x, y)
    loss, g, d, V = forward_gradient(f, params, k=6, aggregate=aggregate, rng=1, return_tangents=True)
    loss_s, g_s, d_s = simulated_forward_gradient(f, params, k=6, aggregate=aggregate, rng=1)
    n = 5 * 8 + 8 + 8 * 3 + 3
    assert V.shape == (6, n) and V.dtype == dtype and d.shape == (6,) and d.dtype == dtype
    assert np.shape(loss) == () and float(loss) == pytest.approx(float(loss_s), rel=tol)
    np.testing.assert_allclose(d, d_s, rtol=tol, atol=tol)
    for a, b in zip(dt.pytree.flatten(g)[0], dt.pytree.flatten(g_s)[0]):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10)
    assert g["l1"]["w"].shape == (5, 8) and g["l2"][1].shape == (3,)
    tt = tangent_tree(V, params)
    np.testing.assert_array_equal(tt["l1"]["b"], V[:, 40:48])


def test_forward_gradient_basis_k_equals_n_is_the_exact_gradient():
    rng = np.random.default_rng(3)
    params = _mlp_params(rng, np.float64)
    x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    f = _mlp_loss(x, y)
    n = 75
    _, g, d = forward_gradient(f, params, k=n, sampler="basis", aggregate="sum", rng=0)
    _, exact = dt.value_and_grad(f)(params)
    for a, b in zip(dt.pytree.flatten(g)[0], dt.pytree.flatten(exact)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert D.cosine_similarity(g, exact) == pytest.approx(1.0)


def test_forward_gradient_batched_problems_and_supplied_tangents():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((5, 7))  # 5 independent problems of dimension 7

    def f(x):
        return dt.sum(x * x * x + 3.0 * x, axis=-1)  # (B,) values; grad 3x^2 + 3

    for shared in (False, True):
        loss, g, d = forward_gradient(f, X, k=3, rng=2, batched=True, shared=shared, aggregate="projection")
        _, g_s, d_s = simulated_forward_gradient(f, X, k=3, rng=2, batched=True, shared=shared, aggregate="projection")
        assert loss.shape == (5,) and d.shape == (3, 5) and g.shape == (5, 7)
        np.testing.assert_allclose(g, g_s, rtol=1e-10)
    Vb = S.normal(3, 7, 0, dtype=np.float64, batch=5)
    _, g, d = forward_gradient(f, X, k=3, sampler=Vb, batched=True, aggregate="mean")
    np.testing.assert_allclose(d, np.einsum("kbn,bn->kb", Vb, 3 * X**2 + 3), rtol=1e-10)
    with pytest.raises(ValueError, match="B losses"):
        forward_gradient(lambda x: dt.sum(x), X, k=2, batched=True)
    with pytest.raises(ValueError, match="a scalar"):
        forward_gradient(lambda x: x * 2.0, X[0], k=2)


def test_forward_gradient_rejects_integer_params():
    with pytest.raises(TypeError, match="floating"):
        forward_gradient(lambda p: dt.sum(p), np.arange(3), k=1)


# --------------------------------------------------------------------------------------- diagnostics

def test_diagnostics():
    rng = np.random.default_rng(0)
    a = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    assert D.cosine_similarity(a, a) == pytest.approx(1.0)
    neg = {k: -v for k, v in a.items()}
    assert D.cosine_similarity(neg, a) == pytest.approx(-1.0)
    assert D.angle_degrees(neg, a) == pytest.approx(180.0)
    two = {k: 2 * v for k, v in a.items()}
    assert D.norm_ratio(two, a) == pytest.approx(2.0)
    flat_a = np.concatenate([a["w"].ravel(), a["b"]])
    flat_r = rng.standard_normal(16)
    r = {"w": flat_r[:12].reshape(3, 4), "b": flat_r[12:]}
    cos = flat_r @ flat_a / np.linalg.norm(flat_r) / np.linalg.norm(flat_a)
    assert D.cosine_similarity(r, a) == pytest.approx(cos)
    c = D.compare(r, a)
    assert c["cosine"] == pytest.approx(cos) and c["angle_deg"] == pytest.approx(math.degrees(math.acos(cos)))
    B = rng.standard_normal((6, 10)).astype(np.float32)
    E = rng.standard_normal((6, 10)).astype(np.float32)
    cb = D.cosine_similarity(B, E, batched=True)
    ref = np.einsum("bn,bn->b", B, E) / np.linalg.norm(B, axis=1) / np.linalg.norm(E, axis=1)
    np.testing.assert_allclose(cb, ref, rtol=1e-5)
    assert D.cosine_similarity(np.zeros(3), np.ones(3)) == 0.0 and D.norm_ratio(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="structures"):
        D.cosine_similarity({"w": a["w"]}, a)


# ------------------------------------------------------------------------------------ device parity

@pytest.mark.parametrize("name", AGGS)
def test_aggregators_and_forward_gradient_on_each_backend(xp, name):
    """The same tangents give the same estimates on numpy and (with a GPU) cupy, in float32."""
    rng = np.random.default_rng(21)
    V = rng.standard_normal((4, 3, 10)).astype(np.float32)
    d = rng.standard_normal((4, 3)).astype(np.float32)
    ref = A.get_aggregator(name)(d, V)
    got = A.get_aggregator(name)(xp.asarray(d), xp.asarray(V))
    assert type(got) is xp.ndarray and got.dtype == np.float32
    np.testing.assert_allclose(_to_np(got), ref, rtol=1e-4, atol=1e-5)
    got1 = A.get_aggregator(name)(xp.asarray(d[:, 0]), xp.asarray(V[:, 0]))
    np.testing.assert_allclose(_to_np(got1), ref[0], rtol=1e-4, atol=1e-5)
    one = A.get_aggregator(name)(xp.asarray(d[:1]), xp.asarray(V[:1]))  # k = 1 per sample: its own product path
    np.testing.assert_allclose(_to_np(one), A.get_aggregator(name)(d[:1], V[:1]), rtol=1e-4, atol=1e-5)
    X = xp.asarray(rng.standard_normal((3, 6)))
    f = lambda x: dt.sum(dt.tanh(x) * x, axis=-1)  # noqa: E731
    _, g, dd = forward_gradient(f, X, k=3, aggregate=name, rng=5, batched=True)
    _, g_s, dd_s = simulated_forward_gradient(f, X, k=3, aggregate=name, rng=5, batched=True)
    assert type(g) is xp.ndarray
    np.testing.assert_allclose(_to_np(g), _to_np(g_s), rtol=1e-9, atol=1e-12)
