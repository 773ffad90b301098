"""Layers with PyTorch names, shapes and default initialisations."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import conv_weights
from ..tensor import primal_of
from . import functional as F
from . import init
from .module import Module, Parameter


def _pair(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Linear(Module):
    """y = x Wᵀ + b with W of shape (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features))
        self.bias = Parameter(init.uniform((out_features,), 1 / math.sqrt(in_features))) if bias else None

    def forward(self, x: Any) -> Any:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-d convolution over NCHW input (torch.nn.Conv2d arguments)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        kh, kw = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        fan_in = in_channels // groups * kh * kw
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = Parameter(init.kaiming_uniform((out_channels, in_channels // groups, kh, kw), fan_in))
        self.bias = Parameter(init.uniform((out_channels,), 1 / math.sqrt(fan_in))) if bias else None
        self._relayout()

    def _relayout(self) -> None:
        """The weights in the layout conv2d reads fastest (backend.conv_weights), the same values."""
        self.weight.data = conv_weights(self.weight.data, self.groups)

    def forward(self, x: Any) -> Any:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class BatchNorm2d(Module):
    """Batch normalisation over (N, C, H, W); running statistics are buffers updated from the primal."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        dtype = init.get_default_dtype()
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, dtype) if track_running_stats else None)
        self.register_buffer("running_var", np.ones(num_features, dtype) if track_running_stats else None)

    def forward(self, x: Any) -> Any:
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch, momentum=self.momentum, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(BatchNorm2d):
    """Batch normalisation over (N, C) or (N, C, L)."""


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions."""

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        dtype = init.get_default_dtype()
        self.weight = Parameter(np.ones(shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype)) if elementwise_affine else None

    def forward(self, x: Any) -> Any:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class MultiheadAttention(Module):
    """Multi-head attention (batch_first only) with torch's parameter layout (in_proj_weight, out_proj)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True):
        super().__init__()
        if not batch_first:
            raise ValueError("MultiheadAttention: only batch_first=True is supported")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if dropout:
            raise ValueError("MultiheadAttention: attention dropout is not supported (use dropout=0.0)")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))  # xavier_uniform on (3E, E), as torch
        self.in_proj_weight = Parameter(init.uniform((3 * embed_dim, embed_dim), bound))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, init.get_default_dtype())) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self.out_proj.bias.data[...] = 0

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first=True"

    def _heads(self, t: Any) -> Any:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.embed_dim // self.num_heads).transpose(0, 2, 1, 3)

    def forward(self, query: Any, key: Any, value: Any, attn_mask: Any = None, is_causal: bool = False,
                need_weights: bool = False) -> tuple:
        """(output, None) for (B, L, E) query and (B, S, E) key/value; ``attn_mask`` as torch
        ((L, S) or (B*heads, L, S); boolean True = masked out, floating = added to the scores).
        Attention weights are not returned (``need_weights=True`` is rejected)."""
        if need_weights:
            raise ValueError("MultiheadAttention: need_weights=True is not supported (the weights stay inside "
                             "the fused attention primitive); pass need_weights=False")
        if query.ndim != 3:
            raise ValueError(f"MultiheadAttention: expected (batch, seq, embed) input, got shape {query.shape}")
        e = self.embed_dim
        if query is key and key is value:  # self-attention: one projection GEMM
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
        else:
            w, b = self.in_proj_weight, self.in_proj_bias
            q = F.linear(query, w[:e], None if b is None else b[:e])
            k = F.linear(key, w[e:2 * e], None if b is None else b[e:2 * e])
            v = F.linear(value, w[2 * e:], None if b is None else b[2 * e:])
        if attn_mask is not None:  # torch layouts (L, S) or (B*heads, L, S); boolean True = NOT allowed
            m = primal_of(attn_mask)
            if m.ndim == 3:
                attn_mask = m = m.reshape(query.shape[0], self.num_heads, *m.shape[1:])
            if m.dtype == bool:
                attn_mask = ~m  # scaled_dot_product_attention's boolean masks mean True = attend
        o = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                           attn_mask=attn_mask, is_causal=is_causal)
        bsz, _, n, _ = o.shape
        o = o.transpose(0, 2, 1, 3).reshape(bsz, n, e)
        return self.out_proj(o), None


class Dropout(Module):
    """Inverted dropout; in forward mode one mask is shared by the primal and all tangents."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x: Any) -> Any:
        return F.dropout(x, self.p, self.training, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Any) -> Any:
        return F.relu(x)


class GELU(Module):
    """Gaussian error linear unit (``approximate="tanh"`` optional)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


class MaxPool2d(Module):
    """Max pooling over NCHW input (stride defaults to the kernel size)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: Any) -> Any:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling over NCHW input (stride defaults to the kernel size)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Any) -> Any:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size."""

    def __init__(self, output_size: Any):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Any) -> Any:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Flatten(Module):
    """Flatten dims ``start_dim``..``end_dim`` (default: all but the batch)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Any) -> Any:
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input."""

    def forward(self, x: Any) -> Any:
        return x
