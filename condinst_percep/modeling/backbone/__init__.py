"""AdelaiDet's backbones with its module names: ResNet-FPN (``bottom_up``, ``fpn_lateral3``,
...) and ResNet-BiFPN (``bottom_up.backbone``, ``repeated_bifpn``), in :data:`BACKBONE_REGISTRY`."""
from __future__ import annotations

from .bifpn import BiFPN, BiFPNLayer, build_fcos_resnet_bifpn_backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import FPN, LastLevelP6, LastLevelP6P7, build_fcos_resnet_fpn_backbone
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet_backbone,
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
    "build_backbone",
    "build_fcos_resnet_bifpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_backbone",
]
