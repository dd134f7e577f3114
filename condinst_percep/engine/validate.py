"""``validate_cfg``: the one check of a whole config, run where a run starts.

It asks every component for the checks of the keys it reads (each ``check_cfg`` lives beside
its component's ``from_config``, see docs/condinst.md "Adding a component: where its config
checks go") and raises one :class:`~condinst_percep.config.UnsupportedConfigError` listing
every problem, each as ``KEY = value: reason``, so a config never silently runs something
other than what it says.
"""
from __future__ import annotations

from ..config import validate
from ..config.validate import collect_problems
from ..data.build import check_loader_cfg
from ..data.dataset_mapper import check_input_cfg
from ..modeling import check_model_cfg
from .hooks import check_test_cfg
from .solver import check_solver_cfg

# Every component's check, in the order their problems are listed.
CONFIG_CHECKS = (
    validate.check_cfg,
    check_model_cfg,
    check_input_cfg,
    check_loader_cfg,
    check_solver_cfg,
    check_test_cfg,
)


def validate_cfg(cfg) -> None:
    """Raise :class:`~condinst_percep.config.UnsupportedConfigError` listing every unsupported
    or invalid setting of ``cfg``, as found by :data:`CONFIG_CHECKS`."""
    collect_problems(cfg, CONFIG_CHECKS)
