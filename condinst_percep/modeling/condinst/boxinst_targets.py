"""BoxInst's training targets from boxes and the raw images (AdelaiDet
``CondInst.add_bitmasks_from_boxes`` and ``get_images_color_similarity``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import color

from ...structures import Instances
from ..fcos.fcos_targets import mask_centroids
from .boxinst_loss import unfold_wo_center


def box_masks(boxes: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
    """Bool (G, Hp, Wp): pixels ``[int(y1), int(y2 + 1)) x [int(x1), int(x2 + 1))`` of each
    XYXY float box (AdelaiDet's slice of the canvas; ``int`` truncates the float32 values)."""
    hp, wp = padded_size
    b = boxes.float()
    ys = torch.arange(hp, device=boxes.device, dtype=torch.float32)
    xs = torch.arange(wp, device=boxes.device, dtype=torch.float32)
    in_y = (ys >= torch.trunc(b[:, 1:2])) & (ys < torch.trunc(b[:, 3:4] + 1))
    in_x = (xs >= torch.trunc(b[:, 0:1])) & (xs < torch.trunc(b[:, 2:3] + 1))
    return in_y[:, :, None] & in_x[:, None, :]


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) → float32 CIE-LAB (3, H, W) (D65, 2°), by scikit-image's
    ``rgb2lab`` in float64 as AdelaiDet computes it."""
    lab = color.rgb2lab(image.permute(1, 2, 0).cpu().numpy())
    return torch.as_tensor(np.ascontiguousarray(lab), dtype=torch.float32).permute(2, 0, 1)


def images_color_similarity(
    image_lab: torch.Tensor, image_mask: torch.Tensor, kernel_size: int, dilation: int
) -> torch.Tensor:
    """``exp(-||lab_i - lab_j|| / 2)`` for each pixel i and neighbour j, times the neighbour's
    validity ``image_mask`` (0 for padding and the removed bottom rows; 0 outside the image):
    (3, h, w) float32 and (h, w) float32 → (K, h, w), K = kernel_size**2 - 1."""
    lab = image_lab[None]
    diff = lab[:, :, None] - unfold_wo_center(lab, kernel_size, dilation)
    similarity = torch.exp(-torch.norm(diff, dim=1) * 0.5)
    weights = unfold_wo_center(image_mask[None, None], kernel_size, dilation)
    return (similarity * weights.max(dim=1)[0])[0]


class BoxInstTargets:
    """Adds to each image's GT, in place of CondInst's mask targets: ``gt_bitmasks`` float32
    (G, Hp/s, Wp/s), the boxes' masks sampled at ``[s//2::s, s//2::s]``; ``gt_centroids``
    float32 (G, 2), the box masks' centres of mass (FCOS centre sampling, as AdelaiDet's
    ``gt_bitmasks_full``); ``image_color_similarity`` float32 (G, K, Hp/s, Wp/s), the
    image's LAB similarity expanded over its boxes (a view, not G copies).

    The LAB image is scikit-image's of the padded uint8 image average-pooled by s and
    truncated to uint8, as in AdelaiDet. The bottom ``bottom_pixels_removed`` rows of the
    original image (scaled to the input size; COCO's boxes there are often wrong) and the
    padding get no pairwise term.
    """

    def __init__(
        self,
        *,
        mask_out_stride: int = 4,
        bottom_pixels_removed: int = 10,
        pairwise_size: int = 3,
        pairwise_dilation: int = 2,
        image_format: str = "BGR",
    ):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(
                f"INPUT.FORMAT must be 'BGR' or 'RGB' for BoxInst, got {image_format!r}"
            )
        self.mask_out_stride = mask_out_stride
        self.bottom_pixels_removed = bottom_pixels_removed
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg) -> dict:
        b = cfg.MODEL.BOXINST
        return dict(
            mask_out_stride=cfg.MODEL.CONDINST.MASK_OUT_STRIDE,
            bottom_pixels_removed=b.BOTTOM_PIXELS_REMOVED,
            pairwise_size=b.PAIRWISE.SIZE,
            pairwise_dilation=b.PAIRWISE.DILATION,
            image_format=cfg.INPUT.FORMAT,
        )

    def __call__(
        self,
        gt_instances: list[Instances],
        batched_inputs: list[dict],
        padded_size: tuple[int, int],
    ) -> None:
        """``batched_inputs``: the model's raw inputs (``image`` uint8 (3, H, W) in
        ``image_format``, optional ``height``, the original height); ``padded_size`` (Hp, Wp)
        of the batch, a multiple of the stride."""
        s = self.mask_out_stride
        hp, wp = padded_size
        if hp % s or wp % s:
            raise ValueError(f"padded size {padded_size} is not a multiple of MASK_OUT_STRIDE {s}")
        for gt, record in zip(gt_instances, batched_inputs):
            image = record["image"]
            h, w = image.shape[-2:]
            canvas = torch.zeros((3, hp, wp), dtype=torch.float32, device=image.device)
            canvas[:, :h, :w] = image
            if self.image_format == "BGR":
                canvas = canvas.flip(0)
            pooled = F.avg_pool2d(canvas[None], kernel_size=s, stride=s)[0]
            lab = rgb_to_lab(pooled.to(torch.uint8)).to(image.device)
            valid = torch.zeros((hp, wp), dtype=torch.float32, device=image.device)
            valid[:h, :w] = 1
            removed = int(self.bottom_pixels_removed * float(h) / float(record.get("height", h)))
            if removed > 0:
                valid[max(h - removed, 0) : h, :] = 0
            similarity = images_color_similarity(
                lab, valid[s // 2 :: s, s // 2 :: s], self.pairwise_size, self.pairwise_dilation
            ).to(gt.gt_boxes.device)
            full = box_masks(gt.gt_boxes, padded_size)
            gt.gt_bitmasks = full[:, s // 2 :: s, s // 2 :: s].float()
            gt.gt_centroids = mask_centroids(full, padded_size)
            gt.image_color_similarity = similarity[None].expand(len(gt), -1, -1, -1)
