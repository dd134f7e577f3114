import logging
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global RNG state, so a failure reproduces."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """``setup_logger`` (run by train_net's main) replaces the package logger's handlers and
    turns off propagation; restore them so a later test's ``caplog`` still sees its records,
    whatever the order the tests run in."""
    logger = logging.getLogger("condinst_percep")
    saved = (logger.propagate, logger.level, list(logger.handlers))
    yield
    for handler in logger.handlers:
        if handler not in saved[2]:
            handler.close()
    logger.propagate, logger.level, logger.handlers[:] = saved[0], saved[1], saved[2]


# shared/ (the vendor snapshots, the real datasets) is beside the clone in CI and absent from a
# user's clone: tests that need it find it through this one path and skip where it is missing.
SHARED_DIR = Path(os.environ.get("CONDINST_PERCEP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture
def shared_dir():
    """``shared/`` (``$CONDINST_PERCEP_SHARED``, default ``../shared`` beside the clone)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (set CONDINST_PERCEP_SHARED to the shared/ folder)")
    return SHARED_DIR
