"""Aggregators: combine k directional derivatives and their tangents into one gradient estimate.

Conventions (row convention): ``d`` has shape ``(k,)`` (weight perturbation) or ``(k, B)`` (one
set per sample); ``V`` has shape ``(k, *feat)`` or ``(k, B, *feat)``; row i of V (flattened to
length n) is tangent v_i and ``d_i = ⟨∇f, v_i⟩``. The estimate has shape ``V.shape[1:]``, i.e.
``(*feat)`` or ``(B, *feat)``. All arithmetic on n-sized arrays stays in V's dtype; only the
tiny k×k Gram solve of ``projection`` runs in float64.

=============  =====================================================================
``single``     d_1 v_1 (the forward gradient g_v of Baydin et al. 2022)
``sum``        Σ_i d_i v_i = V^T V ∇f
``mean``       (1/k) Σ_i d_i v_i (unbiased for E[v v^T] = I, e.g. Gaussian tangents)
``normalized`` Σ_i d_i v_i / ‖v_i‖² = Σ_i ⟨∇f, u_i⟩ u_i with unit tangents u_i = v_i/‖v_i‖
``projection`` V^T (V V^T)^-1 d = P_U ∇f, the orthogonal projection onto U = span(v_1..v_k)
=============  =====================================================================
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

from ..backend import cholesky, get_xp, solve_triangular

__all__ = ["single", "sum", "mean", "normalized", "projection", "chi_mean_ratio", "cond_limit",
           "get_aggregator", "register_aggregator", "AGGREGATORS"]

Aggregator = Callable[..., Any]
_FACTOR_TOL = math.sqrt(np.finfo(np.float64).eps)  # relative residual a valid float64 Cholesky factor meets


def _prepare(d: Any, V: Any, name: str) -> tuple[Any, Any, tuple, Any]:
    """Validate and reshape to d (k, *b) and V (k, *b, n); return them, the output shape and xp."""
    xp = get_xp(d, V, op=name)
    if d.ndim not in (1, 2):
        raise ValueError(f"{name}: directional derivatives must have shape (k,) or (k, B), got {tuple(d.shape)}")
    lead = tuple(d.shape)
    if V.ndim < d.ndim or tuple(V.shape[:d.ndim]) != lead:
        raise ValueError(f"{name}: tangents of shape {tuple(V.shape)} do not match directional derivatives "
                         f"of shape {lead} (expected V of shape {lead + ('*feat',)})")
    if V.dtype.kind != "f":
        raise TypeError(f"{name}: tangents must have a floating dtype, got {V.dtype}")
    out_shape = tuple(V.shape[1:])
    n = math.prod(V.shape[d.ndim:])
    if d.ndim == 2 and is_shared(V):  # keep the stride-0 batch axis: reshape would materialise it
        V = V[:, :1].reshape(lead[0], 1, n)
        V = xp.broadcast_to(V, (lead[0], lead[1], n))
    else:
        V = V.reshape(lead + (n,))
    return d.astype(V.dtype, copy=False), V, out_shape, xp


def is_shared(V: Any) -> bool:
    """True for a (k, B, …) tangent array broadcast over B (one draw shared by all samples)."""
    return V.ndim >= 3 and V.shape[1] > 1 and V.strides[1] == 0


def _combine(c: Any, V: Any, xp: Any) -> Any:
    """Σ_i c_i v_i: (k,)·(k, n) -> (n,), or per sample (k, B)·(k, B, n) -> (B, n), as GEMV/GEMM."""
    if V.ndim == 2:
        # k == 1: dot is 1.7x faster than matmul's (1,)@(1, n) path (float32, n = 1.9M, 1 BLAS thread);
        # for k >= 2 matmul is 0.8-0.97x the time of dot, so it stays
        return xp.dot(c, V) if V.shape[0] == 1 else c @ V
    if is_shared(V):  # tangents shared over the batch: one GEMM (B, k) @ (k, n)
        return c.T @ V[:, 0]
    if V.shape[0] == 1:  # a product: matmul's batched (1, 1) @ (1, n) is 6-12x slower (B = 64, n = 2058 / 40000)
        return c[0][:, None] * V[0]
    return xp.matmul(c.T[:, None, :], V.transpose(1, 0, 2))[:, 0]


def _sqnorms(V: Any, xp: Any) -> Any:
    """‖v‖² along the last axis without an n-sized temporary."""
    return xp.einsum("...n,...n->...", V, V)


def single(d: Any, V: Any) -> Any:
    """d_1 v_1: the single-tangent forward gradient (only the first tangent is used)."""
    d, V, shape, xp = _prepare(d, V, "single")
    return (d[0][..., None] * V[0]).reshape(shape)


def sum(d: Any, V: Any) -> Any:  # noqa: A001 - the registry name
    """Σ_i d_i v_i."""
    d, V, shape, xp = _prepare(d, V, "sum")
    return _combine(d, V, xp).reshape(shape)


def mean(d: Any, V: Any) -> Any:
    """(1/k) Σ_i d_i v_i (unbiased when E[v v^T] = I)."""
    d, V, shape, xp = _prepare(d, V, "mean")
    g = _combine(d, V, xp)
    g *= V.dtype.type(1.0 / d.shape[0])
    return g.reshape(shape)


def normalized(d: Any, V: Any) -> Any:
    """Σ_i d_i v_i / ‖v_i‖²: the sum over the unit tangents u_i = v_i/‖v_i‖ (zero tangents are skipped)."""
    d, V, shape, xp = _prepare(d, V, "normalized")
    sq = _sqnorms(V[:, :1], xp) if is_shared(V) else _sqnorms(V, xp)
    c = d / xp.where(sq == 0, 1, sq)
    return _combine(c, V, xp).reshape(shape)


# ------------------------------------------------------------------------------------ projection

def cond_limit(dtype: Any) -> float:
    """Condition-number limit for the Cholesky path: 1e12 for float64, scaled for other dtypes to the
    same fraction of the available digits (1e12 ** (log eps / log eps64), ≈ 2e5 for float32)."""
    eps, eps64 = float(np.finfo(dtype).eps), float(np.finfo(np.float64).eps)
    return 1e12 ** (math.log(eps) / math.log(eps64))


def chi_mean_ratio(n: int, k: int) -> float:
    """E[χ_n] / E[χ_k] = Γ((n+1)/2) Γ(k/2) / (Γ(n/2) Γ((k+1)/2)), via log-gamma (stable for large n)."""
    from scipy.special import gammaln

    return float(np.exp(gammaln((n + 1) / 2) - gammaln(n / 2) - gammaln((k + 1) / 2) + gammaln(k / 2)))


def _tri_solve_batched(L: Any, b: Any, xp: Any, transpose: bool) -> Any:
    """Solve L x = b (or L^T x = b) for lower-triangular L (B, k, k), b (B, k), vectorised over B.

    Substitution loops over the k rows only (k is small); each step is one vectorised op over B.
    """
    k = L.shape[-1]
    x = xp.empty_like(b)
    if not transpose:
        for i in range(k):
            x[:, i] = (b[:, i] - (L[:, i, :i] * x[:, :i]).sum(axis=-1)) / L[:, i, i]
    else:
        for i in range(k - 1, -1, -1):
            x[:, i] = (b[:, i] - (L[:, i + 1:, i] * x[:, i + 1:]).sum(axis=-1)) / L[:, i, i]
    return x


def _cholesky_solve(G: Any, rhs: Any, xp: Any) -> tuple[Any, Any]:
    """Solve G c = rhs by Cholesky. G (k, k) with rhs (k,) or (k, m), or G (B, k, k) with rhs (B, k).

    Returns (c, condition estimate per matrix); a matrix whose factorisation failed has estimate inf
    (and garbage in c). Failure is judged the same way on every backend: the factor must be finite
    and reproduce G (‖L Lᵀ − G‖ ≤ √eps·‖G‖), since CuPy's Cholesky does not raise. The estimate
    (max_i L_ii / min_i L_ii)² is a cheap lower bound on cond₂(G) from the Cholesky factor.
    """
    G = 0.5 * (G + xp.swapaxes(G, -1, -2))  # exactly symmetric, whatever the GEMM's summation order
    L = cholesky(G)
    diag = xp.abs(xp.diagonal(L, axis1=-2, axis2=-1))
    dmin = diag.min(axis=-1)
    est = xp.where(dmin > 0, (diag.max(axis=-1) / xp.where(dmin > 0, dmin, 1)) ** 2, np.inf)
    Ls = xp.where(xp.isfinite(L), L, 0)
    resid = xp.sqrt((((Ls @ xp.swapaxes(Ls, -1, -2)) - G) ** 2).sum(axis=(-2, -1)))
    scale = xp.sqrt((G ** 2).sum(axis=(-2, -1)))
    ok = xp.isfinite(L).all(axis=(-2, -1)) & (resid <= _FACTOR_TOL * scale) & xp.isfinite(est)
    est = xp.where(ok, est, np.inf)
    L = xp.where(ok[..., None, None], Ls, xp.eye(G.shape[-1], dtype=L.dtype))  # a harmless factor where it failed
    if G.ndim == 2:
        y = solve_triangular(L, rhs, lower=True)
        return solve_triangular(L, y, lower=True, trans="T"), est
    y = _tri_solve_batched(L, rhs, xp, transpose=False)
    return _tri_solve_batched(L, y, xp, transpose=True), est


def _lstsq_projection(d: Any, V: Any, xp: Any, rcond: float) -> Any:
    """Minimum-norm least squares g = V⁺ d via a (batched) thin SVD of V, in V's dtype (the rare
    fallback; CuPy's batched SVD loops over the samples, one cuSOLVER call each).

    V⁺ d = V⁺ V ∇f is exactly the projection onto the numerical row space of V, so rank-deficient
    tangents (k > n, repeated or parallel tangents) still give P_U ∇f. Singular values below
    ``rcond · σ_max`` are treated as zero.
    """
    if V.ndim == 2 or is_shared(V):  # one SVD; d is (k,) or (k, B) right-hand sides
        V0 = V if V.ndim == 2 else V[:, 0]
        U, s, Wt = xp.linalg.svd(V0, full_matrices=False)  # (k, r), (r,), (r, n)
        keep = s > rcond * s.max()
        inv = xp.where(keep, 1 / xp.where(keep, s, 1), 0)
        coef = (U.T @ d) * (inv if d.ndim == 1 else inv[:, None])
        return coef @ Wt if d.ndim == 1 else coef.T @ Wt
    Vb = V.transpose(1, 0, 2)  # (B, k, n)
    U, s, Wt = xp.linalg.svd(Vb, full_matrices=False)  # (B, k, r), (B, r), (B, r, n)
    keep = s > rcond * s.max(axis=-1, keepdims=True)
    ud = xp.matmul(U.transpose(0, 2, 1), d.T[:, :, None])[..., 0]  # (B, r)
    coef = xp.where(keep, ud / xp.where(keep, s, 1), 0)
    return xp.matmul(coef[:, None, :], Wt)[:, 0]


def projection(d: Any, V: Any, *, scale: bool = False, cond_max: float | None = None,
               rcond: float | None = None) -> Any:
    """Orthogonal projection of ∇f onto span(v_1, …, v_k): g = V^T (V V^T)^-1 d.

    The Gram matrix G = V V^T is formed in V's dtype (one GEMM) and the k×k system G c = d is solved
    in float64 by Cholesky (triangular solves for one matrix; a batched (B, k, k) Cholesky with
    substitution vectorised over samples for per-sample tangents; tangents shared over the batch
    factor G once). Never an explicit inverse. A factorisation fails, on NumPy and CuPy alike, when
    its factor is not finite or does not reproduce G. When the factorisation fails or the
    condition estimate exceeds ``cond_max`` (default :func:`cond_limit` of V's dtype: 1e12 for
    float64), a warning names the condition and the affected samples fall back to the minimum-norm
    least-squares solution g = V⁺ d (batched SVD of V, no Gram), which is still the exact projection
    onto the numerical span — e.g. the exact gradient when k ≥ n tangents span R^n.

    k > n tangents make G singular by construction: warned and solved by least squares directly.

    ``scale=True`` multiplies by E[χ_n]/E[χ_k] when k < n (:func:`chi_mean_ratio`; no change for
    k ≥ n, where the projection is the full gradient): for Gaussian tangents ‖P_U ∇f‖ ≈
    ‖∇f‖·E[χ_k]/E[χ_n] ≈ ‖∇f‖·sqrt(k/n), so the scaled estimate has about the gradient's norm.
    """
    d, V, shape, xp = _prepare(d, V, "projection")
    k, n = V.shape[0], V.shape[-1]
    limit = cond_limit(V.dtype) if cond_max is None else float(cond_max)
    rc = float(np.finfo(V.dtype).eps) * max(k, n) if rcond is None else float(rcond)
    d64 = d.astype(np.float64)
    if k > n:  # rank(G) <= n < k: singular by construction, go straight to least squares
        _warn_fallback(float("inf"), limit, V.dtype, None, None, f"rank <= n = {n} < k = {k}")
        g = _lstsq_projection(d, V, xp, rc)
    elif V.ndim == 2 or is_shared(V):
        V0 = V if V.ndim == 2 else V[:, 0]
        G = (V0 @ V0.T).astype(np.float64)
        c, est = _cholesky_solve(G, d64, xp)
        if not float(est) <= limit:
            _warn_fallback(float(est), limit, V.dtype, None, None)
            g = _lstsq_projection(d, V, xp, rc)
        else:
            g = _combine(c.astype(V.dtype), V, xp)
    else:
        Vb = V.transpose(1, 0, 2)  # (B, k, n)
        G = xp.matmul(Vb, Vb.transpose(0, 2, 1)).astype(np.float64)
        c, est = _cholesky_solve(G, d64.T, xp)
        B = V.shape[1]
        bad = ~(est <= limit)
        g = _combine(c.T.astype(V.dtype), V, xp)
        nbad = int(bad.sum())
        if nbad:
            _warn_fallback(float(est.max()), limit, V.dtype, nbad, B)
            idx = xp.nonzero(bad)[0]
            g[idx] = _lstsq_projection(d[:, idx], V[:, idx], xp, rc)
    if scale and k < n:  # for k >= n the projection is already the full gradient
        g *= V.dtype.type(chi_mean_ratio(n, k))
    return g.reshape(shape)


def _warn_fallback(est: float, limit: float, dtype: Any, nbad: int | None, total: int | None,
                   reason: str | None = None) -> None:
    where = "" if nbad is None else f" in {nbad} of {total} samples"
    cond = reason or ("Cholesky failed: singular or indefinite" if not math.isfinite(est) else
                      f"condition estimate {est:.3g} > limit {limit:.3g}")
    warnings.warn(f"projection: Gram matrix of the tangents is ill-conditioned or singular{where} "
                  f"({cond} for {np.dtype(dtype).name} tangents); falling back to a least-squares solve",
                  RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------- registry

AGGREGATORS: dict[str, Aggregator] = {"single": single, "sum": sum, "mean": mean, "normalized": normalized,
                                      "projection": projection}


def register_aggregator(name: str, fn: Aggregator) -> None:
    """Make ``fn(d, V, **kw)`` available to :func:`get_aggregator` under ``name``."""
    AGGREGATORS[name] = fn


def get_aggregator(spec: Any = "projection", **params: Any) -> Aggregator:
    """Resolve an aggregator by name (``single``, ``sum``, ``mean``, ``normalized``, ``projection``)
    or pass a callable through; ``params`` (e.g. ``scale=True``) are bound to it."""
    if isinstance(spec, str):
        try:
            fn = AGGREGATORS[spec]
        except KeyError:
            raise ValueError(f"unknown aggregator {spec!r}; choose one of {sorted(AGGREGATORS)}") from None
    elif callable(spec):
        fn = spec
    else:
        raise TypeError(f"aggregate must be a name or a callable, got {type(spec).__name__}")
    if params:
        import functools

        return functools.partial(fn, **params)
    return fn
