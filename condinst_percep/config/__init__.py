"""Configuration: ``get_cfg()`` returns detectron2's and AdelaiDet's CondInst keys and defaults."""
from .config import CfgNode, ConfigFileError, ConfigKeyError
from .validate import UnsupportedConfigError, validate_cfg


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
    "validate_cfg",
]
