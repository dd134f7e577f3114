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


def load_cfg(config_file: str, opts: list, need_weights: bool = False) -> CfgNode:
    """The frozen config of a command line: defaults, then ``config_file``, then the KEY VALUE
    ``opts``. ``need_weights``: refuse an empty ``MODEL.WEIGHTS`` (a tool that runs a trained
    model) with the fix."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    if need_weights and not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS is empty: pass the checkpoint, e.g. --opts MODEL.WEIGHTS model_final.pth"
        )
    return cfg


__all__ = [
    "CfgNode",
    "ConfigFileError",
    "ConfigKeyError",
    "UnsupportedConfigError",
    "get_cfg",
    "load_cfg",
]
