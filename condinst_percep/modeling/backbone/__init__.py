"""ResNet-FPN backbone with AdelaiDet's module names (``bottom_up``, ``fpn_lateral3``, ...)."""
from __future__ import annotations

from fvcore.common.config import CfgNode

from ...layers import ShapeSpec
from .fpn import FPN, LastLevelP6, LastLevelP6P7, build_fcos_resnet_fpn_backbone
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet_backbone,
)

_BUILDERS = {"build_fcos_resnet_fpn_backbone": build_fcos_resnet_fpn_backbone}


def build_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FPN:
    """The backbone named by ``cfg.MODEL.BACKBONE.NAME`` (only AdelaiDet's ResNet-FPN exists).

    Returns an FPN whose forward maps a normalised, padded (N, 3, H, W) batch to
    ``{"p3": ..., "p7": ...}``; see :class:`FPN`.
    """
    name = cfg.MODEL.BACKBONE.NAME
    if name not in _BUILDERS:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {name!r} is not implemented; available: {sorted(_BUILDERS)}"
        )
    return _BUILDERS[name](cfg, input_shape)


__all__ = [
    "FPN",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "LastLevelP6",
    "LastLevelP6P7",
    "ResNet",
    "build_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_backbone",
]
