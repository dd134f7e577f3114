"""Drawing predicted (or ground-truth) instances on an image with OpenCV: translucent masks with
outlines, boxes, and "class score%" labels."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

__all__ = ["instance_colors", "draw_instances"]

# Well separated, saturated colours (BGR), cycled by class id.
_PALETTE = np.array(
    [
        [75, 25, 230], [75, 180, 60], [25, 225, 255], [200, 130, 0], [48, 130, 245],
        [180, 30, 145], [240, 240, 70], [230, 50, 240], [60, 245, 210], [212, 190, 250],
        [128, 128, 0], [255, 190, 220], [40, 110, 170], [200, 250, 255], [0, 0, 128],
        [195, 255, 170], [0, 128, 128], [180, 215, 255], [128, 0, 0], [128, 128, 128],
    ],
    dtype=np.uint8,
)


def instance_colors(classes: Sequence[int]) -> np.ndarray:
    """(K, 3) uint8 BGR colours, one per instance, chosen by class id."""
    return _PALETTE[np.asarray(classes, dtype=np.int64) % len(_PALETTE)]


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def draw_instances(
    image: np.ndarray,
    masks=None,
    boxes=None,
    classes=None,
    scores=None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Returns a copy of ``image`` with the instances drawn on it.

    Args:
        image: (H, W, 3) uint8 BGR.
        masks: (K, H, W) bool, or None.
        boxes: (K, 4) float XYXY in pixels, or None.
        classes: (K,) int contiguous class ids; required when anything is drawn.
        scores: (K,) float in [0, 1], or None (ground truth).
        class_names: names indexed by class id; ids out of range are shown as numbers.
        alpha: opacity of the mask fill.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
    out = image.copy()
    if classes is None or len(classes) == 0:
        return out
    classes = _to_numpy(classes).astype(np.int64)
    colors = instance_colors(classes)
    height, width = image.shape[:2]

    if masks is not None:
        masks = _to_numpy(masks).astype(bool)
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks have size {masks.shape[1:]} but the image is {(height, width)}")
        # Larger instances first so that small ones stay visible on top.
        for i in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
            m = masks[i]
            if not m.any():
                continue
            color = colors[i].astype(np.float32)
            out[m] = (out[m].astype(np.float32) * (1 - alpha) + color * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), 1, cv2.LINE_AA)

    box_array = _to_numpy(boxes).astype(np.float64) if boxes is not None else None
    score_array = _to_numpy(scores).astype(np.float64) if scores is not None else None
    thickness = max(1, round(min(height, width) / 300))
    font_scale = max(0.35, min(height, width) / 900)
    for i, cls in enumerate(classes):
        color = tuple(int(c) for c in colors[i])
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
        label = name if score_array is None else f"{name} {score_array[i] * 100:.0f}%"
        if box_array is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box_array[i])
            cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness, cv2.LINE_8)
            anchor = (x0, y0)
        elif masks is not None and masks[i].any():
            ys, xs = np.nonzero(masks[i])
            anchor = (int(xs.min()), int(ys.min()))
        else:
            continue
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx = min(max(anchor[0], 0), max(width - tw, 0))
        ty = anchor[1] - 2 if anchor[1] - th - baseline - 2 >= 0 else anchor[1] + th + 2
        cv2.rectangle(out, (tx, ty - th - baseline), (tx + tw, ty + baseline // 2), color, -1)
        b, g, r = color
        text_color = (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 150 else (255, 255, 255)
        cv2.putText(out, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color, 1, cv2.LINE_AA)
    return out
