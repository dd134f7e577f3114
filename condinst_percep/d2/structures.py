"""detectron2 ``Instances`` (``Boxes``, ``PolygonMasks``, ``BitMasks``) to ours at the model's
input, and ours to detectron2's at its output."""

from __future__ import annotations

import torch
from detectron2.structures import BitMasks, Boxes, PolygonMasks
from detectron2.structures import Instances as D2Instances

from ..structures import Instances


def _gt_masks(index: int, masks, height: int, width: int) -> torch.Tensor:
    """bool (G, height, width) from ``PolygonMasks`` (rasterised by detectron2, as AdelaiDet
    does), ``BitMasks`` or a bool tensor."""
    if isinstance(masks, PolygonMasks):
        return BitMasks.from_polygon_masks(masks, height, width).tensor
    if isinstance(masks, BitMasks):
        return masks.tensor.bool()
    if isinstance(masks, torch.Tensor):
        return masks
    raise ValueError(
        f"batched_inputs[{index}]['instances'].gt_masks is a {type(masks).__name__}; expected "
        "detectron2's PolygonMasks or BitMasks (INPUT.MASK_FORMAT 'polygon' or 'bitmask') or a "
        "bool tensor"
    )


def from_d2_instances(index: int, inst: D2Instances, image: torch.Tensor) -> Instances:
    """Our training ``Instances`` from what detectron2's ``DatasetMapper`` gives: ``gt_boxes``
    (``Boxes``) as float (G, 4), ``gt_masks`` as bool (G, H, W) at the image's size, every
    other field as it is. The model checks the result (``check_gt_instances``)."""
    if not isinstance(inst, D2Instances):
        raise ValueError(
            f"batched_inputs[{index}]['instances'] must be a detectron2 Instances, got "
            f"{type(inst).__name__}"
        )
    height, width = image.shape[-2:]
    fields = {}
    for name, value in inst.get_fields().items():
        if isinstance(value, Boxes):
            value = value.tensor
        elif name == "gt_masks":
            value = _gt_masks(index, value, height, width)
        fields[name] = value
    return Instances(inst.image_size, **fields)


def from_d2_inputs(batched_inputs: list[dict]) -> list[dict]:
    """``batched_inputs`` with each ``instances`` converted by :func:`from_d2_instances`
    (shallow copies: the caller's dicts are not modified)."""
    out = []
    for i, x in enumerate(batched_inputs):
        if isinstance(x, dict) and "instances" in x and "image" in x:
            x = dict(x, instances=from_d2_instances(i, x["instances"], x["image"]))
        out.append(x)
    return out


def to_d2_instances(inst: Instances) -> D2Instances:
    """detectron2 ``Instances`` of our inference output: ``pred_boxes`` as ``Boxes``,
    ``scores``, ``pred_classes``, ``pred_masks`` bool (K, height, width)."""
    fields = dict(inst.get_fields())
    fields["pred_boxes"] = Boxes(fields["pred_boxes"])
    return D2Instances(inst.image_size, **fields)
