"""Models: ``build_model(cfg)`` builds CondInst (backbone, FCOS, controller, mask branch and
dynamic mask head) on ``cfg.MODEL.DEVICE``."""

from __future__ import annotations

from torch import nn

from ..config import validate_cfg
from .condinst import CondInst
from .teacher import build_teacher


def build_model(cfg) -> nn.Module:
    """Validates ``cfg`` (``condinst_percep.config.validate_cfg``) and builds the model named by
    ``MODEL.META_ARCHITECTURE`` (only "CondInst") on ``MODEL.DEVICE``."""
    if cfg.MODEL.META_ARCHITECTURE != "CondInst":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r}: only 'CondInst' is implemented"
        )
    validate_cfg(cfg)
    model = CondInst(**CondInst.from_config(cfg))
    return model.to(cfg.MODEL.DEVICE)


__all__ = ["CondInst", "build_model", "build_teacher"]
