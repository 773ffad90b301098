"""Generic checks of a primitive's rules, shared by the op tests.

``check_rules(f, args, diff)`` verifies, in float64: JVP vs central finite differences, k-stacked
tangents vs k single-tangent runs, linearity in the tangent, symbolic-zero tangents vs explicit
zeros, and the adjoint identity <w, J v> = <J^T w, v> between the JVP and the VJP (reverse mode).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import dualtensor as dt
from dualtensor.tensor import Zero

FD_RTOL = 1e-6
ADJ_RTOL = 1e-9


def to_np(a):
    from dualtensor.backend import to_host

    return to_host(a)


def rel_err(a, b):
    a, b = to_np(a), to_np(b)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), np.linalg.norm(a.ravel()), 1e-300))


def noncontig(a):
    """The same values as ``a`` in a non-contiguous (strided) view."""
    xp = dt.get_xp(a)
    if a.ndim == 0:
        return a
    big = xp.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert a.size <= 1 or a.shape[-1] <= 1 or not view.flags.c_contiguous
    return view


def _call(f, args, diff, vals):
    full = list(args)
    for i, v in zip(diff, vals):
        full[i] = v
    return f(*full)


def jvp_stack(f, args, diff, tangents):
    """Output tangent stack of f along the given per-argument tangent stacks (None = symbolic zero)."""
    full = list(args)
    for i, t in zip(diff, tangents):
        full[i] = dt.DualTensor(args[i], t if t is not None else Zero(k_of(tangents), args[i].shape, args[i].dtype))
    out = f(*full)
    assert isinstance(out, dt.DualTensor), f"expected a DualTensor output, got {type(out)}"
    return out.primal, out.tangent_array()


def k_of(tangents):
    return next(t.shape[0] for t in tangents if t is not None)


def check_rules(f, args, diff=(0,), *, k=3, seed=0, eps=1e-6, fd_rtol=FD_RTOL, adj_rtol=ADJ_RTOL,
                ref=None, ref_rtol=1e-12, check_zero=True):
    """Run every rule check on ``f(*args)`` differentiating w.r.t. the positions in ``diff``."""
    xp = dt.get_xp(*[a for a in args if hasattr(a, "shape")])
    rng = np.random.default_rng(seed)
    diff = tuple(diff)
    tangents = [xp.asarray(rng.standard_normal((k, *args[i].shape))) for i in diff]
    plain = f(*args)
    if ref is not None:
        expect = ref(*[to_np(a) if hasattr(a, "shape") else a for a in args])
        assert rel_err(plain, expect) <= ref_rtol, f"primal differs from reference: {rel_err(plain, expect):.3g}"
    primal, tout = jvp_stack(f, args, diff, tangents)
    assert rel_err(primal, plain) <= 1e-14, "primal in forward mode differs from the plain evaluation"
    assert tout.shape == (k, *np.shape(plain))

    # finite differences, one tangent at a time
    for j in range(k):
        up = _call(f, args, diff, [args[i] + eps * t[j] for i, t in zip(diff, tangents)])
        dn = _call(f, args, diff, [args[i] - eps * t[j] for i, t in zip(diff, tangents)])
        fd = (to_np(up) - to_np(dn)) / (2 * eps)
        err = rel_err(tout[j], fd)
        assert err < fd_rtol, f"JVP vs finite differences: relative error {err:.3g} (tangent {j})"

    # k stacked == k single runs (up to rounding, measured against the whole stack's scale:
    # BLAS may block a (k*B)-row GEMM differently from a B-row one)
    scale = max(float(np.linalg.norm(to_np(tout).ravel())), 1e-300)
    for j in range(k):
        _, single = jvp_stack(f, args, diff, [t[j:j + 1] for t in tangents])
        err = float(np.linalg.norm((to_np(single[0]) - to_np(tout[j])).ravel())) / scale
        assert err <= 1e-12, f"stacked tangent {j} differs from its single run: {err:.3g}"

    # linearity: J(a v0 + b v1) = a J v0 + b J v1
    a, b = 0.7, -1.3
    combo = [t[:2] if t.shape[0] >= 2 else xp.concatenate([t, t]) for t in tangents]
    combo = [xp.concatenate([c, (a * c[0] + b * c[1])[None]]) for c in combo]
    _, tl = jvp_stack(f, args, diff, combo)
    assert rel_err(tl[2], a * tl[0] + b * tl[1]) <= 1e-10, "JVP is not linear in the tangent"

    # symbolic zero for all but one argument == explicit zeros
    if check_zero and len(diff) > 1:
        for keep in range(len(diff)):
            sym = [t if n == keep else None for n, t in enumerate(tangents)]
            dense = [t if n == keep else xp.zeros_like(t) for n, t in enumerate(tangents)]
            _, ts = jvp_stack(f, args, diff, sym)
            _, td = jvp_stack(f, args, diff, dense)
            assert rel_err(ts, td) <= 1e-13, "a symbolic Zero tangent gives a different result than zeros"

    # adjoint identity with the reverse-mode VJP
    out, vjp_fn = dt.vjp(lambda *d: _call(f, args, diff, d), *[args[i] for i in diff])
    w = xp.asarray(rng.standard_normal(np.shape(out)))
    cts = vjp_fn(w)
    lhs = [float(xp.sum(w * tout[j])) for j in range(k)]
    rhs = [sum(float(xp.sum(c * t[j])) for c, t in zip(cts, tangents)) for j in range(k)]
    err = rel_err(np.array(lhs), np.array(rhs))
    assert err <= adj_rtol, f"adjoint identity <w, Jv> = <J^T w, v> violated: relative error {err:.3g}"
    return tout


# ---- hypothesis helpers: shapes are drawn, values come from a seeded generator ----

def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def broadcast_pair(draw, max_dims=3, max_side=4):
    """Two shapes that broadcast together (size-1 axes and missing leading axes included)."""
    out = draw(shapes(0, max_dims, 1, max_side))

    def sub(d):
        n = draw(st.integers(0, len(out)))
        return tuple(1 if draw(st.booleans()) else s for s in out[len(out) - n:])

    return sub(0), sub(1)


def make(xp, shape, seed, domain="real", dtype=np.float64):
    """A float array of ``shape`` from ``seed``; domain "real", "positive" (>0.5) or "unit" (|x|<0.9)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal(shape))
    if domain == "positive":
        a = 0.5 + np.abs(a)
    elif domain == "unit":
        a = 0.9 * np.tanh(a)
    elif domain == "away0":  # bounded away from kinks at 0
        a = np.asarray(np.sign(a) * (0.1 + np.abs(a)))
        a[a == 0] = 0.3
    return xp.asarray(a.astype(dtype))
