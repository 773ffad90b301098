"""All primitives, by family. Each family module lists its public functions in ``__all__``."""
import sys as _sys

from .. import tensor as _tensor
from ..tensor import primal_of
from .attention import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .elementwise import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .reduce import *  # noqa: F401,F403
from .shape import *  # noqa: F401,F403
from .softmax import *  # noqa: F401,F403

# (family names such as ``softmax`` are rebound to functions by the star imports: use sys.modules)
FAMILIES = ("attention", "conv", "dropout", "elementwise", "linalg", "loss", "norm", "pool", "reduce", "shape", "softmax")
__all__ = ["primal_of"] + [name for fam in FAMILIES for name in _sys.modules[f"{__name__}.{fam}"].__all__]

_tensor._ops = _sys.modules[__name__]
