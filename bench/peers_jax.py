"""The JAX side of bench/peers.py: a dualtensor model's forward pass in ``jax.numpy``/``lax`` and its
benchmark steps, all jitted.

:func:`apply` walks the dualtensor module tree and evaluates each module with JAX ops on a flat
``{parameter name: array}`` pytree holding the same arrays (batch norm on batch statistics, the
model being timed in train mode; exact erf GELU; attention as softmax(q kᵀ/√d) v). 64-bit types
are enabled (``jax_enable_x64``) so the projection's k×k Gram system is solved in float64, as
dualtensor does; every array keeps the case's dtype.

Steps (``JaxPeer.run``): inference is ``jit(loss)``; backprop ``jit(grad(loss))``; the one-pass
forward gradients ``jit(vmap(jvp))`` with the aggregation (and, for activity perturbation, the
block-local ``jax.vjp`` of the estimate) inside the same jit; the loops a jitted single-tangent
``jvp`` called k times from Python, then a jitted aggregation (+ block VJPs). Tangents are drawn by
a jitted ``jax.random.normal``. Every timed call ends in ``block_until_ready``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from dualtensor.nn import layers as L  # noqa: E402
from dualtensor.nn.models.blocked import Blocked  # noqa: E402
from dualtensor.nn.models.resnet import BasicBlock  # noqa: E402
from dualtensor.nn.models.vit import EncoderBlock, Head, PatchEmbed  # noqa: E402
from dualtensor.nn.module import Sequential  # noqa: E402

NAME = "jax"
VARIANTS = {"inference": "jit(loss)", "backprop": "jit(grad)", "fg": "jit(vmap(jvp))", "loop": "loop of jit(jvp)",
            "draw": f"jit(jax.random.normal), {jax.config.jax_default_prng_impl}"}


def set_threads(n: int | None) -> dict:
    """XLA's CPU threads follow XLA_FLAGS and the CPU affinity at backend start (see bench/peers.py);
    nothing to set here. Returns the flags and devices."""
    import os

    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "devices": [str(d) for d in jax.devices()]}


def versions() -> dict:
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


# ------------------------------------------------------------------------------------------- models

def _pair(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _children(m: Any, pre: str) -> list:
    return [(c, f"{pre}{name}.") for name, c in m.named_children()]


def _normalize(x: jnp.ndarray, axes: tuple, eps: float) -> jnp.ndarray:
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)  # biased, as torch and dualtensor
    return (x - mean) * lax.rsqrt(var + eps)


def _attention(m: Any, P: dict, h: jnp.ndarray, pre: str) -> jnp.ndarray:
    """Self-attention with torch's MultiheadAttention layout (in_proj_weight, out_proj)."""
    b, n, e = h.shape
    heads = m.num_heads
    qkv = h @ P[pre + "in_proj_weight"].T
    if pre + "in_proj_bias" in P:
        qkv = qkv + P[pre + "in_proj_bias"]
    q, k, v = (qkv[..., i * e:(i + 1) * e].reshape(b, n, heads, e // heads).transpose(0, 2, 1, 3) for i in range(3))
    w = jax.nn.softmax((q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(e // heads)), axis=-1)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(b, n, e)
    return _linear(P, o, pre + "out_proj.")


def _linear(P: dict, x: jnp.ndarray, pre: str) -> jnp.ndarray:
    y = x @ P[pre + "weight"].T
    return y + P[pre + "bias"] if pre + "bias" in P else y


def apply(m: Any, P: dict, x: jnp.ndarray, pre: str = "") -> jnp.ndarray:
    """Dualtensor module ``m`` (parameter names prefixed ``pre``) evaluated in JAX on ``P``."""
    if isinstance(m, (Blocked, Sequential)):
        for c, cp in (_children(m.body, pre + "body.") if isinstance(m, Blocked) else _children(m, pre)):
            x = apply(c, P, x, cp)
        return x
    if isinstance(m, BasicBlock):
        out = jax.nn.relu(apply(m.bn1, P, apply(m.conv1, P, x, pre + "conv1."), pre + "bn1."))
        out = apply(m.bn2, P, apply(m.conv2, P, out, pre + "conv2."), pre + "bn2.")
        return jax.nn.relu(out + apply(m.downsample, P, x, pre + "downsample."))
    if isinstance(m, EncoderBlock):
        h = apply(m.norm1, P, x, pre + "norm1.")
        x = x + _attention(m.attn, P, h, pre + "attn.")
        return x + apply(m.mlp, P, apply(m.norm2, P, x, pre + "norm2."), pre + "mlp.")
    if isinstance(m, PatchEmbed):
        p = apply(m.proj, P, x, pre + "proj.")
        b, d = p.shape[0], p.shape[1]
        p = p.reshape(b, d, -1).transpose(0, 2, 1)
        cls = jnp.broadcast_to(P[pre + "cls_token"], (b, 1, d))
        return jnp.concatenate([cls, p], axis=1) + P[pre + "pos_embedding"]
    if isinstance(m, Head):
        return apply(m.fc, P, apply(m.norm, P, x, pre + "norm.")[:, 0], pre + "fc.")
    if isinstance(m, L.Linear):
        return _linear(P, x, pre)
    if isinstance(m, L.Conv2d):
        ph, pw = _pair(m.padding)
        y = lax.conv_general_dilated(x, P[pre + "weight"], _pair(m.stride), ((ph, ph), (pw, pw)),
                                     rhs_dilation=_pair(m.dilation), dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     feature_group_count=m.groups)
        return y + P[pre + "bias"][None, :, None, None] if pre + "bias" in P else y
    if isinstance(m, L.BatchNorm2d):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = _normalize(x, (0, *range(2, x.ndim)), m.eps)
        return y * P[pre + "weight"].reshape(shape) + P[pre + "bias"].reshape(shape) if m.weight is not None else y
    if isinstance(m, L.LayerNorm):
        y = _normalize(x, tuple(range(-len(m.normalized_shape), 0)), m.eps)
        return y * P[pre + "weight"] + P[pre + "bias"] if m.weight is not None else y
    if isinstance(m, L.ReLU):
        return jax.nn.relu(x)
    if isinstance(m, L.GELU):
        return jax.nn.gelu(x, approximate=m.approximate == "tanh")
    if isinstance(m, L.MaxPool2d):
        if m.ceil_mode or _pair(m.dilation) != (1, 1):
            raise NotImplementedError("peers_jax: MaxPool2d with ceil_mode or dilation")
        k = _pair(m.kernel_size)
        s, (ph, pw) = _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding)
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, *k), (1, 1, *s),
                                 ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    if isinstance(m, L.AdaptiveAvgPool2d):
        if _pair(m.output_size) != (1, 1):
            raise NotImplementedError("peers_jax: AdaptiveAvgPool2d to a size other than 1")
        return x.mean((2, 3), keepdims=True)
    if isinstance(m, L.Flatten):
        end = m.end_dim % x.ndim
        return x.reshape(*x.shape[:m.start_dim], -1, *x.shape[end + 1:])
    if isinstance(m, L.Identity):
        return x
    raise TypeError(f"peers_jax: no JAX counterpart for {type(m).__name__}")


def cross_entropy(logits: jnp.ndarray, y: jnp.ndarray, reduction: str = "mean") -> jnp.ndarray:
    per = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=1)[:, 0]
    return per.mean() if reduction == "mean" else per


# --------------------------------------------------------------------------------------- aggregators

def aggregate(name: str, d: jnp.ndarray, V: jnp.ndarray) -> jnp.ndarray:
    """dualtensor's ``mean`` and ``projection`` (Gram in V's dtype, Cholesky solve in float64)."""
    k = d.shape[0]
    if name == "mean":
        return (d @ V if V.ndim == 2 else jnp.einsum("kb,kbn->bn", d, V)) / k
    if name != "projection":
        raise ValueError(f"peers_jax: aggregator {name!r} not mirrored (mean, projection)")
    f64 = jnp.float64
    if V.ndim == 2:
        G = (V @ V.T).astype(f64)
        c = jsl.cho_solve((jnp.linalg.cholesky(G), True), d.astype(f64))
        return c.astype(V.dtype) @ V
    Vb = V.transpose(1, 0, 2)  # (B, k, n)
    G = (Vb @ Vb.transpose(0, 2, 1)).astype(f64)
    c = jsl.cho_solve((jnp.linalg.cholesky(G), True), d.T.astype(f64)[..., None])[..., 0]  # (B, k)
    return jnp.einsum("bk,kbn->bn", c.astype(V.dtype), V)


# -------------------------------------------------------------------------------------------- steps

class JaxPeer:
    """The JAX version of ``case.model`` on the case's batch, with every benchmark step (jitted lazily)."""

    name = NAME
    variants = VARIANTS

    def __init__(self, case: Any, seed: int = 0):
        self.model, self.dtype = case.model, np.dtype(case.dtype)
        self.names = list(case.names)
        self.params = {n: jnp.asarray(case.params[n].data) for n in self.names}
        self.shapes_p = {n: tuple(case.params[n].data.shape) for n in self.names}
        self.x, self.y = jnp.asarray(case.x), jnp.asarray(case.y)
        self.batch = case.batch
        where = {id(m): n for n, m in case.model.named_modules()}
        self.blocks = [(b, where[id(b)] + ".") for b in case.blocks]
        self.block_params = [[n for n in self.names if n.startswith(p)] for _, p in self.blocks]
        self.shapes, self.sizes = list(case.shapes), list(case.sizes)
        self.n = sum(math.prod(s) for s in self.shapes_p.values())
        self.key, self.count = jax.random.PRNGKey(seed), 0
        self._jit: dict = {}

    # -- pure functions ----------------------------------------------------------------------
    def _loss(self, P: dict, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return cross_entropy(apply(self.model, P, x), y)

    def _perturbed(self, P: dict, x: jnp.ndarray, y: jnp.ndarray, eps: list) -> jnp.ndarray:
        """Per-sample losses with ``eps[i]`` added to block i's output."""
        h = x
        for (block, pre), e in zip(self.blocks, eps):
            h = apply(block, P, h, pre) + e
        return cross_entropy(h, y, reduction="none")

    def _split(self, V: jnp.ndarray) -> dict:
        """(…, n) -> {name: (…, *shape)} in dualtensor's parameter order."""
        out, off = {}, 0
        for n in self.names:
            size = math.prod(self.shapes_p[n])
            out[n] = V[..., off:off + size].reshape(*V.shape[:-1], *self.shapes_p[n])
            off += size
        return out

    def _parts(self, V: jnp.ndarray) -> list:
        """(…, B, n) -> per-block (…, *block output shape)."""
        offs = np.cumsum([0, *self.sizes])
        return [V[..., a:b].reshape(*V.shape[:-2], *s) for a, b, s in zip(offs[:-1], offs[1:], self.shapes)]

    def _local_grads(self, P: dict, x: jnp.ndarray, cot: jnp.ndarray) -> dict:
        """Block-local VJPs of the cotangent slices (B, n_i), each block's input held constant."""
        grads, h = {}, x
        for (block, pre), names, c in zip(self.blocks, self.block_params, self._parts(cot)):
            out, back = jax.vjp(lambda Q, h=h, block=block, pre=pre: apply(block, Q, h, pre), {n: P[n] for n in names})
            grads.update(back(c)[0])
            h = out
        return grads

    def _weight_d(self, P: dict, x: jnp.ndarray, y: jnp.ndarray, T: Any) -> jnp.ndarray:
        return jax.jvp(lambda Q: self._loss(Q, x, y), (P,), (T,))[1]

    def _activity_d(self, P: dict, x: jnp.ndarray, y: jnp.ndarray, ts: list) -> jnp.ndarray:
        zeros = [jnp.zeros(s, self.dtype) for s in self.shapes]
        return jax.jvp(lambda eps: self._perturbed(P, x, y, eps), (zeros,), (ts,))[1]

    # -- jitted steps --------------------------------------------------------------------------
    def _fn(self, key: tuple, make: Callable[[], Callable]) -> Callable:
        if key not in self._jit:
            self._jit[key] = jax.jit(make())
        return self._jit[key]

    def _weight_fg(self, agg: str) -> Callable:
        def f(P, x, y, V):
            d = jax.vmap(lambda T: self._weight_d(P, x, y, T))(self._split(V))
            return {"d": d, "grads": self._split(aggregate(agg, d, V))}
        return f

    def _activity_finish(self, agg: str) -> Callable:
        def f(P, x, d, V):
            est = aggregate(agg, d, V)
            return {"d": d, "est": est, "grads": self._local_grads(P, x, est / self.batch)}
        return f

    def _activity_fg(self, agg: str) -> Callable:
        finish = self._activity_finish(agg)

        def f(P, x, y, V):
            return finish(P, x, jax.vmap(lambda ts: self._activity_d(P, x, y, ts))(self._parts(V)), V)
        return f

    def run(self, kind: str, perturb: str | None = None, k: int = 1, agg: str = "mean", V: Any = None) -> dict:
        """One step with tangents ``V`` (weight (k, n), activity (k, B, n)), drawn when None; JAX arrays out."""
        P, x, y = self.params, self.x, self.y
        if kind == "inference":
            return {"loss": self._fn(("inference",), lambda: self._loss)(P, x, y)}
        if kind == "backprop":
            loss, grads = self._fn(("backprop",), lambda: jax.value_and_grad(self._loss))(P, x, y)
            return {"loss": loss, "grads": grads}
        V = self.draw(perturb, k) if V is None else jnp.asarray(V)
        if kind == "fg":
            make = self._weight_fg if perturb == "weight" else self._activity_fg
            return self._fn(("fg", perturb, agg), lambda: make(agg))(P, x, y, V)
        if perturb == "weight":
            one = self._fn(("jvp", "weight"), lambda: lambda P, x, y, v: self._weight_d(P, x, y, self._split(v)))
            d = jnp.stack([one(P, x, y, V[i]) for i in range(k)])
            agg_fn = self._fn(("agg", agg), lambda: lambda d, V: self._split(aggregate(agg, d, V)))
            return {"d": d, "grads": agg_fn(d, V)}
        one = self._fn(("jvp", "activity"), lambda: lambda P, x, y, v: self._activity_d(P, x, y, self._parts(v)))
        d = jnp.stack([one(P, x, y, V[i]) for i in range(k)])
        return self._fn(("finish", agg), lambda: self._activity_finish(agg))(P, x, d, V)

    def draw(self, perturb: str, k: int) -> jnp.ndarray:
        """Standard normal tangents from a jitted draw (a fresh key per call via fold_in)."""
        shape = (k, self.n) if perturb == "weight" else (k, self.batch, sum(self.sizes))

        def make() -> Callable:
            return lambda key, i: jax.random.normal(jax.random.fold_in(key, i), shape, self.dtype)

        fn = self._fn(("draw", shape), make)
        self.count += 1
        return fn(self.key, self.count)

    def timed(self, kind: str, perturb: str | None = None, k: int = 1, agg: str = "mean") -> Callable[[], Any]:
        """A no-argument callable: one step with fresh tangents, or (``draw``) the draw alone, waited for
        (block_until_ready)."""
        if kind == "draw":
            return lambda: jax.block_until_ready(self.draw(perturb, k))
        return lambda: jax.block_until_ready(self.run(kind, perturb, k, agg))

    @staticmethod
    def to_numpy(t: Any) -> np.ndarray:
        return np.asarray(t)
