"""Neural-network building blocks with PyTorch conventions (``from dualtensor import nn``)."""
from . import functional, init
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     Identity, LayerNorm, Linear, MaxPool2d, MultiheadAttention, ReLU)
from .module import Module, ModuleList, Parameter, Sequential, functional_call

__all__ = ["functional", "init", "Module", "ModuleList", "Parameter", "Sequential", "functional_call",
           "Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "MultiheadAttention", "Dropout",
           "ReLU", "GELU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Identity"]
