"""CondInst's inference post-processing: detections and mask probabilities on the padded
network input -> ``Instances`` at the caller's image size. Shared by the eager model
(``CondInst.inference``) and ``ExportedPredictor``, whose graph ends before the final resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...layers import aligned_bilinear
from ...structures import Instances, clip_boxes, nonempty_boxes, scale_boxes

__all__ = ["paste_masks", "postprocess"]

# Elements of float32 work memory per chunk of masks pasted at the original image size.
_POSTPROCESS_CHUNK_ELEMENTS = 1 << 25


def paste_masks(
    probs: torch.Tensor,
    factor: int,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """(K, 1, Hp / factor, Wp / factor) mask probabilities on the padded input canvas -> bool
    (K, height, width): ``aligned_bilinear`` by ``factor`` to the padded input size (``factor``
    1: already there), crop to the un-padded ``input_size`` (h, w), bilinear resize
    (align_corners=False) to ``output_size`` (height, width), ``> mask_threshold``.

    Masks are processed in chunks so that the float work memory stays bounded whatever the
    image size (AdelaiDet materialises all masks at once as float: issue #376)."""
    h, w = input_size
    height, width = output_size
    masks = torch.zeros((len(probs), height, width), dtype=torch.bool, device=probs.device)
    pixels = max(probs.shape[-2] * probs.shape[-1] * factor * factor, height * width)
    chunk = max(1, _POSTPROCESS_CHUNK_ELEMENTS // pixels)
    for start in range(0, len(probs), chunk):
        m = aligned_bilinear(probs[start : start + chunk].float(), factor)[:, :, :h, :w]
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
        masks[start : start + chunk] = m[:, 0] > mask_threshold
    return masks


def postprocess(
    instances: Instances,
    input_size: tuple[int, int],
    height: int,
    width: int,
    padded_size: tuple[int, int],
    mask_threshold: float = 0.5,
) -> Instances:
    """Scales boxes to (height, width), clips them, drops empty ones, and pastes the masks
    ``pred_global_masks`` (K, 1, Hp/4, Wp/4) (:func:`paste_masks`).

    Returns ``pred_boxes`` float32 (K, 4), ``scores`` float32 (K,), ``pred_classes`` int64
    (K,), ``pred_masks`` bool (K, height, width).
    """
    h, w = input_size
    boxes = scale_boxes(instances.pred_boxes.float(), width / w, height / h)
    boxes = clip_boxes(boxes, (height, width))
    keep = nonempty_boxes(boxes)
    probs = instances.pred_global_masks[keep]
    factor = padded_size[0] // probs.shape[-2]
    return Instances(
        (height, width),
        pred_boxes=boxes[keep],
        scores=instances.scores[keep].float(),
        pred_classes=instances.pred_classes[keep],
        pred_masks=paste_masks(probs, factor, input_size, (height, width), mask_threshold),
    )
