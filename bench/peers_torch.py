"""The PyTorch side of bench/peers.py: a torch copy of a dualtensor model and its benchmark steps.

:func:`convert` rebuilds a dualtensor model from ``torch.nn`` modules with the same parameter names
(``nn.MultiheadAttention`` included: its parameters are named as dualtensor's), and
:class:`TorchPeer` copies the parameters in. Batch norm runs on batch statistics
(``track_running_stats=False``: the dualtensor models are timed in train mode, and in-place
running-statistics updates do not compose with ``torch.func.vmap``).

Steps (``TorchPeer.run``): inference is a ``no_grad`` forward pass; backprop is autograd on
``functional_call``; the one-pass forward gradients are ``torch.func.vmap(jvp)`` over the k
tangents; the loops are k single ``torch.func.jvp`` calls. Forward-mode steps run under
``sdpa_kernel(MATH)``: the fused CPU attention kernel has no forward-AD formula.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as TF
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from dualtensor.nn import layers as L
from dualtensor.nn.models.blocked import Blocked
from dualtensor.nn.models.resnet import BasicBlock
from dualtensor.nn.models.vit import EncoderBlock, Head, PatchEmbed
from dualtensor.nn.module import Sequential

NAME = "torch"
VARIANTS = {"inference": "forward (no_grad)", "backprop": "autograd", "fg": "vmap(jvp)", "loop": "loop of jvp",
            "draw": "torch.randn"}


def set_threads(n: int | None) -> dict:
    """torch's intra-op (and, if still possible, inter-op) threads; returns what is in effect."""
    if n is not None:
        torch.set_num_threads(int(n))
        try:
            torch.set_num_interop_threads(int(n))
        except RuntimeError:  # already started: only settable before the first parallel work
            pass
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def versions() -> dict:
    return {"torch": torch.__version__, "torch_parallel": torch.__config__.parallel_info().splitlines()[0:3]}


# ------------------------------------------------------------------------------------------- models

class TBlocked(nn.Module):
    def __init__(self, body: list):
        super().__init__()
        self.body = nn.ModuleList(body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.body:
            x = b(x)
        return x


class TBasicBlock(nn.Module):
    def __init__(self, m: BasicBlock):
        super().__init__()
        self.conv1, self.bn1 = convert(m.conv1), convert(m.bn1)
        self.conv2, self.bn2 = convert(m.conv2), convert(m.bn2)
        self.downsample = convert(m.downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = TF.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return TF.relu(out + self.downsample(x))


class TEncoderBlock(nn.Module):
    def __init__(self, m: EncoderBlock):
        super().__init__()
        a = m.attn
        self.norm1 = convert(m.norm1)
        self.attn = nn.MultiheadAttention(a.embed_dim, a.num_heads, bias=a.in_proj_bias is not None, batch_first=True)
        self.norm2, self.mlp = convert(m.norm2), convert(m.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TPatchEmbed(nn.Module):
    def __init__(self, m: PatchEmbed):
        super().__init__()
        self.proj = convert(m.proj)
        self.cls_token = nn.Parameter(torch.zeros(m.cls_token.data.shape))
        self.pos_embedding = nn.Parameter(torch.zeros(m.pos_embedding.data.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        b, d = p.shape[0], p.shape[1]
        p = p.reshape(b, d, -1).transpose(1, 2)
        return torch.cat([self.cls_token.expand(b, 1, d), p], dim=1) + self.pos_embedding


class THead(nn.Module):
    def __init__(self, m: Head):
        super().__init__()
        self.norm, self.fc = convert(m.norm), convert(m.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


def convert(m: Any) -> nn.Module:
    """A torch module computing what dualtensor module ``m`` computes, with the same parameter names
    (parameters uninitialised: see :func:`load_parameters`)."""
    if isinstance(m, Blocked):
        return TBlocked([convert(b) for b in m.body])
    if isinstance(m, Sequential):
        return nn.Sequential(*[convert(c) for c in m])
    if isinstance(m, BasicBlock):
        return TBasicBlock(m)
    if isinstance(m, EncoderBlock):
        return TEncoderBlock(m)
    if isinstance(m, PatchEmbed):
        return TPatchEmbed(m)
    if isinstance(m, Head):
        return THead(m)
    if isinstance(m, L.Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, L.Conv2d):
        return nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         bias=m.bias is not None)
    if isinstance(m, L.BatchNorm2d):
        cls = nn.BatchNorm1d if isinstance(m, L.BatchNorm1d) else nn.BatchNorm2d
        return cls(m.num_features, eps=m.eps, affine=m.weight is not None, track_running_stats=False)
    if isinstance(m, L.LayerNorm):
        return nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.weight is not None)
    simple = {L.ReLU: lambda: nn.ReLU(), L.Identity: lambda: nn.Identity(),
              L.GELU: lambda: nn.GELU(approximate=m.approximate),
              L.MaxPool2d: lambda: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode),
              L.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(m.output_size),
              L.Flatten: lambda: nn.Flatten(m.start_dim, m.end_dim)}
    if type(m) in simple:
        return simple[type(m)]()
    raise TypeError(f"peers_torch: no torch counterpart for {type(m).__name__}")


def load_parameters(tmodel: nn.Module, case: Any, dtype: torch.dtype) -> None:
    """Copy the case's parameters into ``tmodel`` (names must match one to one); no gradients kept."""
    tmodel.to(dtype)
    tparams = dict(tmodel.named_parameters())
    if set(tparams) != set(case.names):
        raise ValueError(f"peers_torch: parameter names differ: {sorted(set(tparams) ^ set(case.names))}")
    with torch.no_grad():
        for n in case.names:
            tparams[n].copy_(torch.from_numpy(np.ascontiguousarray(case.params[n].data)))
    tmodel.requires_grad_(False)


# --------------------------------------------------------------------------------------- aggregators

def aggregate(name: str, d: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """dualtensor's aggregators for d (k,) with V (k, n), or per sample d (k, B) with V (k, B, n):
    ``mean`` (1/k) Σ d_i v_i; ``projection`` V^T (V V^T)^-1 d, the Gram in V's dtype, solved in float64
    by Cholesky, as dualtensor does."""
    k = d.shape[0]
    if name == "mean":
        return (d @ V if V.ndim == 2 else torch.einsum("kb,kbn->bn", d, V)) / k
    if name != "projection":
        raise ValueError(f"peers_torch: aggregator {name!r} not mirrored (mean, projection)")
    if V.ndim == 2:
        G = (V @ V.T).double()
        c = torch.cholesky_solve(d.double()[:, None], torch.linalg.cholesky(G))[:, 0]
        return c.to(V.dtype) @ V
    Vb = V.transpose(0, 1)  # (B, k, n)
    G = (Vb @ Vb.transpose(1, 2)).double()
    c = torch.cholesky_solve(d.T.double()[..., None], torch.linalg.cholesky(G))[..., 0]  # (B, k)
    return torch.einsum("bk,kbn->bn", c.to(V.dtype), V)


# -------------------------------------------------------------------------------------------- steps

class TorchPeer:
    """The torch copy of ``case.model`` on the case's batch, with every benchmark step."""

    name = NAME
    variants = VARIANTS

    def __init__(self, case: Any, seed: int = 0):
        self.dtype = torch.float64 if case.dtype == np.float64 else torch.float32
        self.model = convert(case.model)
        load_parameters(self.model, case, self.dtype)
        self.names = list(case.names)
        self.params = {n: p.detach() for n, p in self.model.named_parameters()}
        self.numels = [self.params[n].numel() for n in self.names]
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(case.x)), torch.from_numpy(case.y).long()
        self.batch = case.batch
        where = {id(m): n for n, m in case.model.named_modules()}
        prefixes = [where[id(b)] for b in case.blocks]
        self.blocks = [self.model.get_submodule(p) for p in prefixes]
        self.block_params = [{n[len(p) + 1:]: n for n in self.names if n.startswith(p + ".")} for p in prefixes]
        self.shapes, self.sizes = list(case.shapes), list(case.sizes)
        self.zeros = [torch.zeros(s, dtype=self.dtype) for s in self.shapes]
        self.n = sum(self.numels)
        self.gen = torch.Generator().manual_seed(seed)

    # -- functions of the parameters / the block-output perturbations ----------------------
    def _loss(self, P: dict) -> torch.Tensor:
        return TF.cross_entropy(functional_call(self.model, P, (self.x,)), self.y)

    def _perturbed(self, eps: list) -> torch.Tensor:
        """Per-sample losses with ``eps[i]`` added to block i's output (its jvp injects tangents there)."""
        h = self.x
        for block, e in zip(self.blocks, eps):
            h = block(h) + e
        return TF.cross_entropy(h, self.y, reduction="none")

    def _split(self, V: torch.Tensor) -> dict:
        """(…, n) -> {name: (…, *shape)} in dualtensor's parameter order."""
        lead = V.shape[:-1]
        return {n: t.reshape(*lead, *self.params[n].shape) for n, t in zip(self.names, V.split(self.numels, -1))}

    def _parts(self, V: torch.Tensor) -> list:
        """(k, B, n) -> per-block (k, *block output shape)."""
        return [t.reshape(V.shape[0], *s) for t, s in zip(V.split(self.sizes, -1), self.shapes)]

    def _local_grads(self, cot: torch.Tensor) -> dict:
        """Each block's parameter gradient from the VJP of its slice of ``cot`` (B, n), the block input
        held constant: autograd over a forward pass with detached block inputs."""
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        h, outs, cots = self.x, [], []
        for block, names, c in zip(self.blocks, self.block_params, cot.split(self.sizes, -1)):
            out = functional_call(block, {local: leaves[full] for local, full in names.items()}, (h,))
            outs.append(out)
            cots.append(c.reshape(out.shape))
            h = out.detach()
        got = torch.autograd.grad(outs, [leaves[n] for n in self.names], cots, allow_unused=True)
        return {n: torch.zeros_like(self.params[n]) if g is None else g for n, g in zip(self.names, got)}

    # -- the steps ----------------------------------------------------------------------------
    def run(self, kind: str, perturb: str | None = None, k: int = 1, agg: str = "mean", V: Any = None) -> dict:
        """One step with tangents ``V`` (torch or NumPy; weight (k, n), activity (k, B, n)), drawn when None.
        Returns torch tensors: loss / grads / d / est as the step produces them."""
        if kind == "inference":
            with torch.no_grad():
                return {"loss": self._loss(self.params)}
        if kind == "backprop":
            leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
            loss = self._loss(leaves)
            got = torch.autograd.grad(loss, [leaves[n] for n in self.names])
            return {"loss": loss.detach(), "grads": dict(zip(self.names, got))}
        V = self.draw(perturb, k) if V is None else torch.as_tensor(V)
        with sdpa_kernel(SDPBackend.MATH):
            if perturb == "weight":
                d = self._weight_d(V, kind == "loop")
                g = aggregate(agg, d, V)
                return {"d": d, "grads": self._split(g)}
            d = self._activity_d(V, kind == "loop")
            est = aggregate(agg, d, V)
            return {"d": d, "est": est, "grads": self._local_grads(est / self.batch)}

    def _weight_d(self, V: torch.Tensor, loop: bool) -> torch.Tensor:
        T = self._split(V)
        if loop:
            return torch.stack([jvp(self._loss, (self.params,), ({n: t[i] for n, t in T.items()},))[1]
                                for i in range(V.shape[0])])
        return vmap(lambda t: jvp(self._loss, (self.params,), (t,))[1])(T)

    def _activity_d(self, V: torch.Tensor, loop: bool) -> torch.Tensor:
        parts = self._parts(V)
        if loop:
            return torch.stack([jvp(self._perturbed, (self.zeros,), ([p[i] for p in parts],))[1]
                                for i in range(V.shape[0])])
        return vmap(lambda ts: jvp(self._perturbed, (self.zeros,), (ts,))[1])(parts)

    def draw(self, perturb: str, k: int) -> torch.Tensor:
        """Standard normal tangents: weight (k, n), activity (k, B, n)."""
        shape = (k, self.n) if perturb == "weight" else (k, self.batch, sum(self.sizes))
        return torch.randn(shape, generator=self.gen, dtype=self.dtype)

    def timed(self, kind: str, perturb: str | None = None, k: int = 1, agg: str = "mean") -> Any:
        """A no-argument callable: one step with fresh tangents, or (``draw``) the draw alone (torch on
        CPU is synchronous)."""
        if kind == "draw":
            return lambda: self.draw(perturb, k)
        return lambda: self.run(kind, perturb, k, agg)

    @staticmethod
    def to_numpy(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()
