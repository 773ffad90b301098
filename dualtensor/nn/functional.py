"""Functional layers under torch.nn.functional names and argument conventions.

Each works on plain arrays (inference), DualTensor (forward mode) and Traced (reverse mode).
"""
from ..ops import (adaptive_avg_pool2d, avg_pool2d, batch_norm, conv2d, cross_entropy,  # noqa: F401
                   dropout, gelu, layer_norm, linear, log_softmax, max_pool2d, mse_loss, nll_loss, relu,
                   scaled_dot_product_attention, sigmoid, softmax, tanh)
from ..ops import flatten  # noqa: F401
