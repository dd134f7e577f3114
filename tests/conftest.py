import logging

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
