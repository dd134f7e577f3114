"""Helpers on plain box tensors ``(N, 4)`` in XYXY pixel coordinates (detectron2 ``Boxes``)."""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` XYXY -> ``(N,)`` areas ``(x2 - x1) * (y2 - y1)``, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, ``(N, 4), (M, 4) -> (N, M)``; 0 where the boxes do not intersect.

    Same arithmetic as detectron2's ``pairwise_iou`` and torchvision's NMS kernel:
    ``inter / (area1 + area2 - inter)`` with areas ``(x2 - x1) * (y2 - y1)`` (no +1).
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    width_height = torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(
        boxes1[:, None, :2], boxes2[:, :2]
    )
    inter = width_height.clamp(min=0).prod(dim=2)
    return torch.where(inter > 0, inter / (area1[:, None] + area2 - inter), inter.new_zeros(()))


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
