"""ResNet-FPN backbone with AdelaiDet's module names (``bottom_up``, ``fpn_lateral3``, ...)."""
from __future__ import annotations

from fvcore.common.config import CfgNode

from ...config.validate import Report, check_choice
from ...layers import ShapeSpec
from .fpn import (
    FPN,
    LastLevelP6,
    LastLevelP6P7,
    backbone_output_names,
    build_fcos_resnet_fpn_backbone,
    check_fpn_cfg,
)
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet_backbone,
    check_resnet_cfg,
)

# MODEL.BACKBONE.NAME -> (builder, the check of the keys it reads besides the ResNet's).
_BUILDERS = {"build_fcos_resnet_fpn_backbone": (build_fcos_resnet_fpn_backbone, check_fpn_cfg)}


def check_backbone_cfg(cfg: CfgNode, bad: Report) -> None:
    """``MODEL.BACKBONE.NAME``, the ResNet's keys (the bottom-up network of every backbone
    here and of AdelaiDet's BiFPN ones) and the keys of the backbone ``NAME`` names."""
    if cfg.MODEL.MOBILENET:
        bad("MODEL.MOBILENET", "the MobileNetV2 backbone is not implemented")
    name = cfg.MODEL.BACKBONE.NAME
    check_choice(
        cfg, bad, "MODEL.BACKBONE.NAME", _BUILDERS,
        "only the ResNet-FPN backbone is implemented (no BiFPN, VoVNet, DLA)",
    )
    check_resnet_cfg(cfg, bad)
    if name in _BUILDERS:
        _BUILDERS[name][1](cfg, bad)


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
    return _BUILDERS[name][0](cfg, input_shape)


__all__ = [
    "FPN",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "LastLevelP6",
    "LastLevelP6P7",
    "ResNet",
    "backbone_output_names",
    "build_backbone",
    "check_backbone_cfg",
    "check_fpn_cfg",
    "check_resnet_cfg",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_backbone",
]
