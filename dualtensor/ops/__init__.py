"""All primitives, by family. Each family module lists its public functions in ``__all__``."""
from .. import tensor as _tensor
from ..autodiff import primal_of
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
from . import attention, conv, dropout, elementwise, linalg, loss, norm, pool, reduce, shape, softmax

__all__ = ["primal_of"] + [name for m in (attention, conv, dropout, elementwise, linalg, loss, norm, pool,
                                           reduce, shape, softmax) for name in m.__all__]

_tensor._ops = __import__(__name__, fromlist=["*"])
