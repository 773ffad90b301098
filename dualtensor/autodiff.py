"""Function transformations: forward mode ``jvp`` with stacked tangents, and reverse mode
(``vjp``/``value_and_grad`` on a tape) used as the project's NumPy backprop baseline."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .backend import get_xp
from .core import vjp_of_node
from .pytree import flatten, unflatten
from .tensor import DualTensor, Traced, _as_float_array, primal_of


def _call(f: Callable, primals: Any, wrapped: Any) -> Any:
    return f(*wrapped) if isinstance(primals, tuple) else f(wrapped)


def jvp(f: Callable, primals: Any, tangents: Any, *, has_aux: bool = False) -> tuple[Any, Any]:
    """Evaluate ``f`` and its directional derivatives along k tangents in one forward pass.

    ``primals`` is a tuple of positional arguments (or a single array/list/dict argument);
    ``tangents`` has the same structure with a leading k axis on every leaf.
    Returns ``(outputs, output_tangents)`` (pytrees; every tangent leaf is ``(k, *out.shape)``),
    plus ``aux`` when ``has_aux``.
    """
    p_leaves, p_def = flatten(primals)
    t_leaves, t_def = flatten(tangents)
    if p_def != t_def or len(p_leaves) != len(t_leaves):
        raise ValueError("jvp: primals and tangents must have the same pytree structure")
    duals, k = [], None
    for p, t in zip(p_leaves, t_leaves):
        p = _as_float_array(p, "jvp")
        d = DualTensor(p, t)
        if k is not None and d.k != k:
            raise ValueError(f"jvp: all tangent leaves need the same k, got {k} and {d.k} (shape {t.shape})")
        k = d.k
        duals.append(d)
    out = _call(f, primals, unflatten(p_def, duals))
    aux = None
    if has_aux:
        out, aux = out
    o_leaves, o_def = flatten(out)
    outs, touts = [], []
    for o in o_leaves:
        if type(o) is DualTensor:
            outs.append(o.primal)
            touts.append(o.tangent_array())
        else:  # independent of the inputs: zero tangents
            outs.append(o)
            xp = get_xp(o)
            touts.append(xp.zeros((k, *xp.shape(o)), dtype=getattr(o, "dtype", None) or xp.asarray(o).dtype))
    res = (unflatten(o_def, outs), unflatten(o_def, touts))
    return res + (aux,) if has_aux else res


def backward(outputs: Sequence[Traced], cotangents: Sequence[Any]) -> dict[int, Any]:
    """Accumulate cotangents from ``outputs`` (Traced values) back through their tape; returns
    ``{traced id: cotangent}`` for every value reached (leaves included)."""
    # Collect reachable traced values; ids grow with creation, so descending id is a valid reverse order.
    seen: dict[int, Traced] = {}
    stack = list(outputs)
    while stack:
        v = stack.pop()
        if v.id in seen:
            continue
        seen[v.id] = v
        if v.node is not None:
            stack.extend(p for _, p in v.node.parents)
    ct: dict[int, Any] = {}
    for o, g in zip(outputs, cotangents):
        ct[o.id] = ct[o.id] + g if o.id in ct else g
    leaves: dict[int, Any] = {}
    for vid in sorted(seen, reverse=True):
        g = ct.pop(vid, None)
        if g is None:
            continue
        v = seen[vid]
        if v.node is None:
            leaves[vid] = g
            continue
        for parent, c in vjp_of_node(v.node, g):
            ct[parent.id] = ct[parent.id] + c if parent.id in ct else c
    return leaves


def vjp(f: Callable, *primals: Any, has_aux: bool = False) -> tuple[Any, Callable]:
    """Run ``f(*primals)`` on the tape; return ``(out, vjp_fn)`` with ``vjp_fn(cot) -> cotangents``.

    ``cot`` has the structure of ``out``; the result is a tuple with one pytree per primal.
    """
    leaves_per_arg, defs, traced_args = [], [], []
    for p in primals:
        leaves, d = flatten(p)
        tr = [Traced(_as_float_array(x, "vjp")) for x in leaves]
        leaves_per_arg.append(tr)
        defs.append(d)
        traced_args.append(unflatten(d, tr))
    out = f(*traced_args)
    aux = None
    if has_aux:
        out, aux = out
    o_leaves, o_def = flatten(out)
    # a DualTensor output of a mixed computation is differentiated through its primal's tape twin
    o_leaves = [o.trace if type(o) is DualTensor and o.trace is not None else o for o in o_leaves]
    out_values = unflatten(o_def, [o.value if type(o) is Traced else o for o in o_leaves])

    def vjp_fn(cot: Any) -> tuple:
        c_leaves, c_def = flatten(cot)
        if c_def != o_def:
            raise ValueError("vjp: cotangent structure differs from the output structure")
        pairs = [(o, c) for o, c in zip(o_leaves, c_leaves) if type(o) is Traced and c is not None]
        for o, c in pairs:
            if tuple(c.shape) != o.shape:
                raise ValueError(f"vjp: cotangent shape {tuple(c.shape)} does not match output shape {o.shape}")
        got = backward([o for o, _ in pairs], [c for _, c in pairs])
        res = []
        for tr, d in zip(leaves_per_arg, defs):
            res.append(unflatten(d, [got[t.id] if t.id in got else get_xp(t.value).zeros_like(t.value) for t in tr]))
        return tuple(res)

    return (out_values, vjp_fn, aux) if has_aux else (out_values, vjp_fn)


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, *, has_aux: bool = False) -> Callable:
    """Reverse-mode ``(value, grad)`` of a scalar-valued ``f`` w.r.t. the arguments ``argnums``.

    Gradients have the pytree structure of the chosen arguments (a tuple when argnums is a tuple).
    """
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args: Any):
        def g(*diff):
            full = list(args)
            for n, v in zip(nums, diff):
                full[n] = v
            return f(*full)

        res = vjp(g, *(args[n] for n in nums), has_aux=has_aux)
        value, fn = res[0], res[1]
        xp = get_xp(value)
        if xp.ndim(value) != 0 and getattr(value, "size", 1) != 1:
            raise ValueError(f"value_and_grad: f must return a scalar, got shape {xp.shape(value)}")
        grads = fn(xp.ones_like(value))
        grads = grads[0] if isinstance(argnums, int) else grads
        return ((value, res[2]) if has_aux else value), grads

    return wrapped


def grad(f: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """Reverse-mode gradient of a scalar-valued ``f``."""
    vg = value_and_grad(f, argnums)
    return lambda *args: vg(*args)[1]


stop_gradient = primal_of
