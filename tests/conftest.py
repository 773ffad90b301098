import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Derandomized and bounded so the suite is reproducible and fits CI; HYPOTHESIS_PROFILE=dev explores more.
settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _gpu():
    from dualtensor.backend import gpu_available
    return gpu_available()


@pytest.fixture(scope="session", params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: numpy always, cupy when a GPU is present."""
    if request.param == "numpy":
        return np
    if not _gpu():
        pytest.skip("cupy with a GPU is not available")
    import cupy
    return cupy


# One BLAS thread for the whole session: the suite shares 2 cores with pytest's own work, and the
# training code leaves BLAS at the library's default unless --threads says otherwise.
try:
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
except ImportError:  # pragma: no cover
    pass
