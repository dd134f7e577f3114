"""Models: ``build_model(cfg)`` builds CondInst (backbone, FCOS, controller, mask branch and
dynamic mask head) on ``cfg.MODEL.DEVICE``."""

from __future__ import annotations

import torch
from torch import nn

from ..config import validate_cfg
from .condinst import CondInst


def build_model(cfg) -> nn.Module:
    """Validates ``cfg`` (``condinst_percep.config.validate_cfg``) and builds the model named by
    ``MODEL.META_ARCHITECTURE`` (only "CondInst") on ``MODEL.DEVICE``."""
    if cfg.MODEL.META_ARCHITECTURE != "CondInst":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r}: only 'CondInst' is implemented"
        )
    validate_cfg(cfg)
    check_device(cfg.MODEL.DEVICE)
    model = CondInst(**CondInst.from_config(cfg))
    return model.to(cfg.MODEL.DEVICE)


def check_device(device: str) -> None:
    """Raise, naming ``MODEL.DEVICE``, when this process cannot use ``device`` (detectron2's
    default "cuda" on a machine without CUDA), rather than fail inside ``Module.to`` or fall
    back to the CPU unasked."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(
            f"MODEL.DEVICE = {device!r}, but CUDA cannot be used here ({why}; torch "
            f"{torch.__version__}); add 'MODEL.DEVICE cpu' to train or evaluate on the CPU"
        )
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ValueError(
            f"MODEL.DEVICE = {device!r}, but this process sees {torch.cuda.device_count()} GPU(s)"
        )


__all__ = ["CondInst", "build_model", "check_device"]
