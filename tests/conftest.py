import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Derandomized and bounded so the suite is reproducible and fits CI; HYPOTHESIS_PROFILE=dev explores more.
settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _real_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


# CuPy: the real one where a GPU is present, else the stand-in (tests/cupy_standin), registered as
# `cupy`/`cupyx` for the whole session so every CuPy code path runs on CuPy's semantics.
REAL_GPU = _real_gpu()
if not REAL_GPU:
    for _name in [n for n in sys.modules if n == "cupy" or n.startswith(("cupy.", "cupyx", "cupy_backends"))]:
        del sys.modules[_name]
    import cupy_standin

    cupy_standin.install()


@pytest.fixture(scope="session", params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: numpy, and cupy (real with a GPU, else the stand-in)."""
    if request.param == "numpy":
        return np
    import cupy
    return cupy


# One BLAS thread (and one oneDNN OpenMP thread, where the onednn extra is installed) for the whole
# session: the suite shares 2 cores with pytest's own work, and the training code leaves both at the
# libraries' defaults unless --threads says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by the OpenMP runtime when oneDNN loads it
try:
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def global_state():
    """make_case sets the default dtype and reseeds the init generator: restore both afterwards."""
    from dualtensor.backend import get_default_dtype, set_default_dtype
    from dualtensor.nn import init as nn_init

    dtype, rng = get_default_dtype(), nn_init._rng
    yield
    set_default_dtype(dtype)
    nn_init._rng = rng
