from .aligned_bilinear import aligned_bilinear
from .batch_norm import (
    NORM_NAMES,
    FrozenBatchNorm2d,
    NaiveSyncBatchNorm,
    check_norm_cfg,
    get_norm,
    guard_batch_statistics,
)
from .losses import IOULoss, dice_coefficient, sigmoid_focal_loss
from .nms import batched_nms, nms
from .shape_spec import ShapeSpec
from .wrappers import Conv2d, c2_msra_fill, c2_xavier_fill

__all__ = [
    "NORM_NAMES",
    "Conv2d",
    "FrozenBatchNorm2d",
    "NaiveSyncBatchNorm",
    "c2_msra_fill",
    "c2_xavier_fill",
    "check_norm_cfg",
    "get_norm",
    "guard_batch_statistics",
    "IOULoss",
    "aligned_bilinear",
    "batched_nms",
    "dice_coefficient",
    "nms",
    "sigmoid_focal_loss",
    "ShapeSpec",
]
