"""Configuration: ``get_cfg()`` returns detectron2's and AdelaiDet's CondInst keys and defaults.

The checks of a config live beside the components that read it (``check_cfg``);
``condinst_percep.engine.validate_cfg`` runs them all.
"""
from .config import CfgNode, ConfigFileError, ConfigKeyError
from .validate import UnsupportedConfigError


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config (see ``defaults.py``)."""
    from .defaults import _C

    return _C.clone()


__all__ = [
    "CfgNode",
    "ConfigFileError",
    "ConfigKeyError",
    "UnsupportedConfigError",
    "get_cfg",
]
