from .aligned_bilinear import aligned_bilinear
from .losses import IOULoss, dice_coefficient, sigmoid_focal_loss_jit
from .nms import batched_nms, nms
from .shape_spec import ShapeSpec

__all__ = [
    "IOULoss",
    "aligned_bilinear",
    "batched_nms",
    "dice_coefficient",
    "nms",
    "sigmoid_focal_loss_jit",
    "ShapeSpec",
]
