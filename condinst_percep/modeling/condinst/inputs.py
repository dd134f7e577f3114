"""Checks of the model's inputs: bad data fails here with the image index and the field named,
not deep inside torch (or, worse, silently)."""

from __future__ import annotations

import torch

from ...structures import Instances


def check_image(index: int, record: dict, channels: int) -> torch.Tensor:
    """``record["image"]``, checked to be a (channels, H, W) tensor with H, W >= 1."""
    if not isinstance(record, dict) or "image" not in record:
        raise ValueError(f"batched_inputs[{index}] has no 'image' (keys: {_keys(record)})")
    image = record["image"]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != channels:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"batched_inputs[{index}]['image'] must be a ({channels}, H, W) tensor, got {shape}"
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"batched_inputs[{index}]['image'] is empty: shape {tuple(image.shape)}")
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise ValueError(f"batched_inputs[{index}]['image'] holds NaN or inf values")
    return image


def check_gt_instances(
    index: int, record: dict, num_classes: int, need_masks: bool = True
) -> Instances:
    """``record["instances"]``, checked: ``gt_boxes`` finite float (G, 4) with x1 <= x2 and
    y1 <= y2, ``gt_classes`` int64 (G,) in [0, num_classes), ``gt_masks`` bool (G, H, W) at the
    image's size (not read, so not needed, when ``need_masks`` is False: BoxInst)."""
    where = f"batched_inputs[{index}]['instances']"
    inst = record.get("instances")
    if not isinstance(inst, Instances):
        raise ValueError(
            f"batched_inputs[{index}] needs 'instances' (an Instances) for training, got "
            f"{type(inst).__name__}"
        )
    fields = ("gt_boxes", "gt_classes", "gt_masks") if need_masks else ("gt_boxes", "gt_classes")
    for field in fields:
        if not inst.has(field):
            raise ValueError(f"{where} has no field '{field}' (fields: {list(inst.get_fields())})")
    boxes, classes = inst.gt_boxes, inst.gt_classes
    g = len(classes)
    h, w = record["image"].shape[-2:]
    if not boxes.is_floating_point() or boxes.shape != (g, 4):
        raise ValueError(
            f"{where}.gt_boxes must be float ({g}, 4), got {boxes.dtype} {tuple(boxes.shape)}"
        )
    if classes.dtype != torch.int64 or classes.dim() != 1:
        raise ValueError(
            f"{where}.gt_classes must be int64 (G,), got {classes.dtype} {tuple(classes.shape)}"
        )
    masks = inst.gt_masks if need_masks else None
    if masks is not None and (masks.dtype != torch.bool or masks.shape != (g, h, w)):
        raise ValueError(
            f"{where}.gt_masks must be bool ({g}, {h}, {w}) at the image size, got "
            f"{masks.dtype} {tuple(masks.shape)}"
        )
    if g:
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{where}.gt_boxes holds NaN or inf: {boxes.tolist()}")
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bool(inverted.any()):
            bad = inverted.nonzero()[:, 0].tolist()
            raise ValueError(
                f"{where}.gt_boxes has x2 < x1 or y2 < y1 at rows {bad}: {boxes[bad].tolist()}"
            )
        out_of_range = (classes < 0) | (classes >= num_classes)
        if bool(out_of_range.any()):
            bad = out_of_range.nonzero()[:, 0].tolist()
            raise ValueError(
                f"{where}.gt_classes has values outside [0, {num_classes}) at rows {bad}: "
                f"{classes[bad].tolist()}"
            )
    return inst


def _keys(record) -> list:
    return list(record) if isinstance(record, dict) else [type(record).__name__]
