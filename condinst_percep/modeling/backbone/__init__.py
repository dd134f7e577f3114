"""AdelaiDet's backbones with its module names, in :data:`BACKBONE_REGISTRY`: ResNet-FPN
(``bottom_up``, ``fpn_lateral3``, ...) and ResNet-BiFPN (``bottom_up.backbone``,
``repeated_bifpn``)."""
from __future__ import annotations

from .bifpn import BiFPN, BiFPNLayer, build_fcos_resnet_bifpn_backbone, check_bifpn_cfg
from .build import (
    BACKBONE_REGISTRY,
    backbone_out_channels,
    backbone_output_names,
    build_backbone,
    check_backbone_cfg,
    neck_key,
    register_backbone,
)
from .fpn import FPN, LastLevelP6, LastLevelP6P7, build_fcos_resnet_fpn_backbone, check_fpn_cfg
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet_backbone,
    check_resnet_cfg,
)

__all__ = [
    "BACKBONE_REGISTRY",
    "BiFPN",
    "BiFPNLayer",
    "FPN",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "LastLevelP6",
    "LastLevelP6P7",
    "ResNet",
    "backbone_out_channels",
    "backbone_output_names",
    "build_backbone",
    "build_fcos_resnet_bifpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_backbone",
    "check_backbone_cfg",
    "check_bifpn_cfg",
    "check_fpn_cfg",
    "check_resnet_cfg",
    "neck_key",
    "register_backbone",
]
