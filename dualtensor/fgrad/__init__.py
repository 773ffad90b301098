"""Multi-tangent forward gradients: tangent samplers, aggregators, weight perturbation, diagnostics.

Implements the estimators of Baydin et al. 2022 ("Gradients without Backpropagation") and
Flügel et al. 2024 ("Beyond Backpropagation: Optimization with Multi-Tangent Forward Gradients")
with real forward-mode AD: one forward pass carries all k tangents.
"""
from . import activity, aggregators, diagnostics, samplers, streams, weight
from .activity import ESTIMATORS, ActivityResult, BatchNormCouplingWarning, activity_gradient
from .aggregators import AGGREGATORS, get_aggregator, register_aggregator
from .diagnostics import angle_degrees, compare, cosine_similarity, norm_ratio
from .samplers import SAMPLERS, get_sampler, register_sampler, validate_tangents
from .streams import KeyedTangents
from .weight import forward_gradient, simulated_forward_gradient, tangent_tree

__all__ = ["activity", "ActivityResult", "ESTIMATORS", "BatchNormCouplingWarning", "streams", "KeyedTangents", "activity_gradient", "aggregators",
           "diagnostics", "samplers", "weight", "AGGREGATORS", "get_aggregator",
           "register_aggregator", "SAMPLERS", "get_sampler", "register_sampler", "validate_tangents",
           "angle_degrees", "compare", "cosine_similarity", "norm_ratio", "forward_gradient",
           "simulated_forward_gradient", "tangent_tree"]
