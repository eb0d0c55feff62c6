"""Root conftest: loaded for tests/ and for the notebooks under nbs/ (nbval).

With pytest-xdist (`make test`, `make test-nbs`) two workers start Jupyter kernels at the same time.
jupyter_client picks free TCP ports and releases them before the kernel binds them, so two kernels
started together can pick the same port and one dies at start ("Kernel died before replying to
kernel_info"; jupyter/jupyter_client#154, treebeardtech/nbmake#129). A kernel that dies while it
starts is started again, on fresh ports, up to three times. A notebook that fails later still fails.
"""
import logging
import time

import pytest


def _retrying(start, attempts: int = 3):
    def start_new_kernel(*args, **kwargs):
        for attempt in range(1, attempts + 1):
            try:
                return start(*args, **kwargs)
            except RuntimeError as e:  # nbval's start_new_kernel has shut the dead kernel down
                if attempt == attempts or "Kernel died" not in str(e):
                    raise
                logging.getLogger(__name__).warning("kernel died at start (%s); starting it again", e)
                time.sleep(attempt)

    return start_new_kernel


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    try:
        import nbval.kernel
    except ImportError:  # nbval not installed: nothing to patch
        return
    if not getattr(nbval.kernel.start_new_kernel, "_paperbook_retry", False):
        nbval.kernel.start_new_kernel = _retrying(nbval.kernel.start_new_kernel)
        nbval.kernel.start_new_kernel._paperbook_retry = True
