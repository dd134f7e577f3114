"""Box and mask losses of FCOS / CondInst (AdelaiDet's ``IOULoss`` and ``dice_coefficient``).

The focal loss is fvcore's ``sigmoid_focal_loss``, re-exported here: the same function as the
``sigmoid_focal_loss_jit`` AdelaiDet calls, run eagerly (TorchScript is deprecated, and its
first-call compilation cost seconds on CPU).
"""

from __future__ import annotations

import torch
from fvcore.nn import sigmoid_focal_loss
from torch import nn

__all__ = ["IOULoss", "compute_ious", "dice_coefficient", "sigmoid_focal_loss"]

LOC_LOSS_TYPES = ("iou", "linear_iou", "giou")


def compute_ious(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of boxes given as distances ``(l, t, r, b)`` from a common point.

    Args:
        pred, target: (N, 4) non-negative distances, in stride units for FCOS.

    Returns:
        ``(ious, gious)``, each (N,). The IoU is smoothed, ``(inter + 1) / (union + 1)``, with the
        +1 in the same units as the distances (AdelaiDet); the GIoU subtracts
        ``(C - union) / C`` with ``C`` the area of the enclosing box.
    """
    pl, pt, pr, pb = pred.unbind(dim=1)
    tl, tt, tr, tb = target.unbind(dim=1)
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    w_inter = torch.min(pl, tl) + torch.min(pr, tr)
    h_inter = torch.min(pb, tb) + torch.min(pt, tt)
    enclosing = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pb, tb) + torch.max(pt, tt))
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    gious = ious - (enclosing - union) / enclosing
    return ious, gious


class IOULoss(nn.Module):
    """Summed IoU loss on ``(l, t, r, b)`` boxes: ``-log(iou)`` ("iou"), ``1 - iou``
    ("linear_iou") or ``1 - giou`` ("giou"), each optionally weighted per box."""

    def __init__(self, loc_loss_type: str = "iou"):
        super().__init__()
        if loc_loss_type not in LOC_LOSS_TYPES:
            raise ValueError(
                f"MODEL.FCOS.LOC_LOSS_TYPE must be one of {LOC_LOSS_TYPES}, got {loc_loss_type!r}"
            )
        self.loc_loss_type = loc_loss_type

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``pred``, ``target`` (N, 4); ``weight`` (N,) or None. Returns a scalar sum."""
        ious, gious = compute_ious(pred, target)
        if self.loc_loss_type == "iou":
            losses = -torch.log(ious)
        elif self.loc_loss_type == "linear_iou":
            losses = 1 - ious
        else:
            losses = 1 - gious
        if weight is not None:
            return (losses * weight).sum()
        return losses.sum()


def dice_coefficient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-instance dice loss ``1 - 2 sum(x t) / (sum(x^2) + sum(t^2) + 1e-5)``.

    Args:
        x: (n, ...) mask probabilities. target: (n, ...) same shape, 0/1 (same dtype as x).

    Returns:
        (n,) losses, one per instance (summed over all its pixels).
    """
    eps = 1e-5
    n_inst = x.size(0)
    x = x.reshape(n_inst, -1)
    target = target.reshape(n_inst, -1)
    intersection = (x * target).sum(dim=1)
    union = (x**2.0).sum(dim=1) + (target**2.0).sum(dim=1) + eps
    return 1.0 - (2 * intersection / union)
