"""Helpers on plain box tensors ``(N, 4)`` in XYXY pixel coordinates (detectron2 ``Boxes``)."""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` XYXY -> ``(...)`` areas ``(x2 - x1) * (y2 - y1)``, in the boxes' dtype."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes paired by broadcasting, ``(..., 4), (..., 4) -> (...)``; 0 where the boxes
    do not intersect.

    Same arithmetic, operation for operation, as detectron2's ``pairwise_iou`` and
    torchvision's NMS kernel: ``inter / (area1 + area2 - inter)`` with areas
    ``(x2 - x1) * (y2 - y1)`` (no +1), so a float32 result is bit-identical to theirs.
    """
    width = torch.min(boxes1[..., 2], boxes2[..., 2]) - torch.max(boxes1[..., 0], boxes2[..., 0])
    height = torch.min(boxes1[..., 3], boxes2[..., 3]) - torch.max(boxes1[..., 1], boxes2[..., 1])
    inter = width.clamp(min=0) * height.clamp(min=0)
    union = box_area(boxes1) + box_area(boxes2) - inter
    return torch.where(inter > 0, inter / union, inter.new_zeros(()))


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, ``(N, 4), (M, 4) -> (N, M)`` (:func:`box_iou`)."""
    return box_iou(boxes1[:, None], boxes2[None])


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Clamps x to ``[0, width]`` and y to ``[0, height]``; returns a new tensor."""
    h, w = image_size
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack(
        (x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), dim=1
    )


def nonempty_boxes(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``(N,)`` bool: width and height both strictly greater than ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def scale_boxes(boxes: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Multiplies x coordinates by ``scale_x`` and y by ``scale_y``; returns a new tensor."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
