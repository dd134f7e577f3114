import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from condinst_percep.config import CfgNode, get_cfg
from condinst_percep.layers import FrozenBatchNorm2d


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global RNG state, so a failure reproduces."""
    torch.manual_seed(0)
    yield


# The loggers ``setup_logger`` configures (train_net's main sets up both): it replaces their
# handlers and turns off propagation, which hides their records from ``caplog``.
_SETUP_LOGGERS = ("condinst_percep", "fvcore")


@pytest.fixture(scope="session")
def _pristine_loggers():
    """The loggers' state before any test or fixture ran. Taken per session, not per test: a
    module-scoped fixture that runs main (tests/tools/test_train_net.py's ``trained``) is set up
    before a test's own fixtures, so a per-test snapshot would already hold its changes."""
    return [(lg, lg.propagate, lg.level, list(lg.handlers))
            for lg in map(logging.getLogger, _SETUP_LOGGERS)]


@pytest.fixture(autouse=True)
def _restore_package_logger(_pristine_loggers):
    """After each test, the loggers as they were before the session, so a later test's
    ``caplog`` sees its records whatever ran before it."""
    yield
    for logger, propagate, level, handlers in _pristine_loggers:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.propagate, logger.level, logger.handlers[:] = propagate, level, handlers


REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"


def load_tool(name: str) -> ModuleType:
    """Imports ``tools/<name>.py`` (tools/ is a folder of scripts, not a package), registered as
    ``sys.modules[name]`` because dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The tests' small CondInst: ResNet-18 with an 8-channel stem and res2, a 64-channel FPN (two
# channels per GroupNorm group), one conv per FCOS tower and in the mask branch, on the CPU, from
# scratch. train_net.py runs take the same keys as command-line overrides (their values equal
# the quickstart config's where it sets them).
TINY_MODEL = {
    "MODEL.DEVICE": "cpu",
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 8,
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.FCOS.NUM_CLS_CONVS": 1,
    "MODEL.FCOS.NUM_BOX_CONVS": 1,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS": 16,
    "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS": 1,
}


def tiny_cfg(**overrides) -> CfgNode:
    """``get_cfg()`` with TINY_MODEL, then ``overrides``: dotted keys and their values, set as
    given (no YAML parsing), e.g. ``tiny_cfg(**{"MODEL.FCOS.NUM_CLASSES": 3})``."""
    cfg = get_cfg()
    set_keys(cfg, {**TINY_MODEL, **overrides})
    return cfg


# tiny_cfg overrides for the tests that build backbones alone: a 16-channel FPN and, at 50 and
# 101 layers, bottlenecks 4 channels wide (res2 16 channels).
SMALL_BACKBONE = {
    depth: {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.FPN.OUT_CHANNELS": 16,
        **({"MODEL.RESNETS.RES2_OUT_CHANNELS": 16, "MODEL.RESNETS.WIDTH_PER_GROUP": 4} if depth >= 50 else {}),
    }
    for depth in (18, 34, 50, 101)
}


def set_keys(cfg: CfgNode, changes: dict) -> None:
    """Sets each dotted key of ``changes`` in ``cfg``; a key that ``cfg`` lacks is a KeyError, so
    that a misspelt override fails instead of adding a key nobody reads."""
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for name in path:
            node = node[name]
        if last not in node:
            raise KeyError(f"{key} is not a config key")
        node[last] = value


def randomise_norms(module: nn.Module) -> None:
    """Random affine parameters and running statistics in every (frozen) batch norm of ``module``,
    so that a comparison cannot pass on identity norms."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """(config file, weights) of percep_helpers.write_teacher's teacher, written once per module."""
    from tests.percep_helpers import write_teacher  # imported here: percep_helpers imports tiny_cfg

    return write_teacher(tmp_path_factory.mktemp("teacher"))


# shared/ (the vendor snapshots, the real datasets) is beside the clone in CI and absent from a
# user's clone: tests that need it find it through this one path and skip where it is missing.
SHARED_DIR = Path(os.environ.get("CONDINST_PERCEP_SHARED", REPO.parent / "shared"))


@pytest.fixture
def shared_dir():
    """``shared/`` (``$CONDINST_PERCEP_SHARED``, default ``../shared`` beside the clone)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (set CONDINST_PERCEP_SHARED to the shared/ folder)")
    return SHARED_DIR
