"""dualtensor: forward-mode automatic differentiation with stacked tangents, and
multi-tangent forward gradients for training neural networks without backpropagation."""
from . import backend, ops
from . import data, distributed, fgrad, nn, optim  # noqa: E402  (public subpackages)
from .autodiff import grad, jvp, primal_of, stop_gradient, value_and_grad, vjp
from .backend import get_default_dtype, get_xp, gpu_available, set_default_dtype, to_device
from .core import Primitive
from .ops import *  # noqa: F401,F403
from .tensor import DualTensor, Traced, Zero, dual
from .fgrad import activity_gradient, forward_gradient, simulated_forward_gradient  # noqa: E402

__version__ = "0.1.0"
