"""FCOS training targets (AdelaiDet ``FCOSOutputs._get_ground_truth``), vectorised over locations
and ground truths.

Every per-location tensor is flattened **level-major**: level 0 of image 0, level 0 of image 1,
..., level 1 of image 0, ...; within a level and image, row-major (x fastest). ``pos_inds`` and
the controller outputs use the same order.
"""

from __future__ import annotations

import torch

from ...layers.host_values import segment_ids, values_on
from ...structures import Instances, box_area

INF = 100000000


def compute_locations(h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
    """(h*w, 2) float32 ``(x, y)`` image coordinates of a stride-``stride`` feature map's
    pixels, ``(stride*j + stride//2, stride*i + stride//2)``, row-major (x varies fastest)."""
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


def size_ranges(sizes_of_interest: list[int]) -> list[list[float]]:
    """``[64, 128, 256, 512]`` -> ``[[-1, 64], [64, 128], [128, 256], [256, 512], [512, INF]]``."""
    ranges, prev = [], -1
    for s in sizes_of_interest:
        ranges.append([prev, s])
        prev = s
    ranges.append([prev, INF])
    return ranges


def mask_centroids(masks: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
    """Centres of mass ``(x, y)`` of bool masks (G, H, W), (G, 2) float32, 0-based pixel indices.

    Reproduces AdelaiDet's float32 moments on the zero-padded float canvas (Hp, Wp) without
    building it (G*Hp*Wp floats): its per-row sums are exact integers in float32 (for widths
    below ~5800), so they are computed here at the input size, and the only rounding sum, over
    rows, runs over the same (G, Hp) values. The mass is clamped to >= 1e-6, so an empty mask
    has centre (0, 0).
    """
    g, h, w = masks.shape
    hp, wp = padded_size
    rows = torch.zeros(3, g, hp, dtype=torch.float32, device=masks.device)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    # Chunks bound the float copy of the masks to ~2^24 elements whatever the image size.
    chunk = max(1, (1 << 24) // max(h * w, 1))
    for start in range(0, g, chunk):
        m = masks[start : start + chunk].to(torch.float32)
        row_mass = m.sum(dim=-1)
        rows[0, start : start + chunk, :h] = row_mass
        rows[1, start : start + chunk, :h] = (m * xs).sum(dim=-1)
        rows[2, start : start + chunk, :h] = row_mass * ys
    m00, m10, m01 = rows.sum(dim=-1)
    m00 = m00.clamp(min=1e-6)
    return torch.stack((m10 / m00, m01 / m00), dim=1)


def _targets_per_image(
    locations: torch.Tensor,
    radii: torch.Tensor,
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor,
    centers: torch.Tensor | None,
    num_classes: int,
    center_sample: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels (L,), (l, t, r, b) pixel targets (L, 4) and matched GT index (L,) of one image."""
    xs, ys = locations[:, 0], locations[:, 1]
    reg = torch.stack(
        (
            xs[:, None] - boxes[None, :, 0],
            ys[:, None] - boxes[None, :, 1],
            boxes[None, :, 2] - xs[:, None],
            boxes[None, :, 3] - ys[:, None],
        ),
        dim=2,
    )
    if center_sample:
        if centers is None:
            centers = torch.stack(
                (boxes[:, [0, 2]].sum(dim=-1) * 0.5, boxes[:, [1, 3]].sum(dim=-1) * 0.5), dim=1
            )
        cx, cy = centers[None, :, 0], centers[None, :, 1]
        r = radii[:, None]
        # Sample box: the centre +- radius * stride, clipped to the GT box.
        x0 = torch.maximum(cx - r, boxes[None, :, 0])
        y0 = torch.maximum(cy - r, boxes[None, :, 1])
        x1 = torch.minimum(cx + r, boxes[None, :, 2])
        y1 = torch.minimum(cy + r, boxes[None, :, 3])
        inside = torch.stack(
            (xs[:, None] - x0, ys[:, None] - y0, x1 - xs[:, None], y1 - ys[:, None]), dim=2
        ).min(dim=2).values > 0
        # AdelaiDet quirk kept on purpose: a first GT centred exactly at x == 0 disables every
        # positive of the image (its "no gt" test sums the first GT's centre x over locations).
        inside = inside & (centers[0, 0] != 0)
    else:
        inside = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    cared = (max_reg >= ranges[:, [0]]) & (max_reg <= ranges[:, [1]])
    area = box_area(boxes)[None].expand(len(locations), -1)
    area = torch.where(inside & cared, area, area.new_full((), INF))
    # Ambiguous locations take the smallest GT; min() returns the first index on ties.
    min_area, gt_inds = area.min(dim=1)
    reg = reg[torch.arange(len(locations), device=reg.device), gt_inds]
    labels = classes[gt_inds]
    labels = torch.where(min_area == INF, labels.new_full((), num_classes), labels)
    return labels, reg, gt_inds


def compute_targets(
    locations: list[torch.Tensor],
    strides: list[int],
    sizes_of_interest: list[int],
    gt_instances: list[Instances],
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
) -> Instances:
    """FCOS targets of every location of every image, flattened level-major.

    Args:
        locations: per level, (H_l*W_l, 2) float32 location coordinates.
        strides: per level, the stride.
        sizes_of_interest: e.g. [64, 128, 256, 512]; the inclusive regression range of level l
            is ``[soi[l-1], soi[l]]`` (``-1`` and ``1e8`` at the ends).
        gt_instances: per image, with ``gt_boxes`` float (G, 4) XYXY and ``gt_classes`` int64
            (G,); optional ``gt_centroids`` float32 (G, 2) mask centres used for centre
            sampling (box centres otherwise).
        num_classes: the background label.

    Returns:
        Instances over all P locations with ``labels`` int64 (P,) (``num_classes`` =
        background), ``gt_inds`` int64 (P,) index into the batch's concatenated GTs (-1 for
        images without GT), ``im_inds`` int64 (P,), ``reg_targets`` float32 (P, 4) in units of
        the level's stride, ``locations`` float32 (P, 2), ``fpn_levels`` int64 (P,).
    """
    device = locations[0].device
    num_loc = [len(loc) for loc in locations]
    level_of_loc = segment_ids(num_loc, device)
    all_locations = torch.cat(locations, dim=0)
    stride_of_loc = values_on(strides, device)[level_of_loc]
    low, high = zip(*size_ranges(sizes_of_interest))
    ranges = torch.stack([values_on(low, device), values_on(high, device)], dim=1)[level_of_loc]
    total = len(all_locations)

    labels, reg_targets, gt_inds = [], [], []
    offset = 0
    for gt in gt_instances:
        boxes = gt.gt_boxes
        if len(boxes) == 0:
            labels.append(torch.full((total,), num_classes, dtype=torch.int64, device=device))
            reg_targets.append(all_locations.new_zeros((total, 4)))
            gt_inds.append(torch.full((total,), -1, dtype=torch.int64, device=device))
            continue
        centers = gt.gt_centroids if gt.has("gt_centroids") else None
        lab, reg, inds = _targets_per_image(
            all_locations, stride_of_loc * radius, ranges, boxes.float(), gt.gt_classes,
            centers, num_classes, center_sample,
        )
        labels.append(lab)
        reg_targets.append(reg / stride_of_loc[:, None])
        gt_inds.append(inds + offset)
        offset += len(boxes)

    num_images = len(gt_instances)
    im_inds = torch.arange(num_images, device=device)[:, None].expand(num_images, total)
    per_image = {
        "labels": torch.stack(labels),
        "gt_inds": torch.stack(gt_inds),
        "im_inds": im_inds,
        "reg_targets": torch.stack(reg_targets),
        "locations": all_locations[None].expand(num_images, -1, -1),
        "fpn_levels": level_of_loc[None].expand(num_images, -1),
    }
    return Instances(
        (0, 0), **{k: level_major(v, num_loc) for k, v in per_image.items()}
    )


def level_major(per_image: torch.Tensor, num_loc: list[int]) -> torch.Tensor:
    """(N, sum(num_loc), ...) image-major -> (N*sum(num_loc), ...) level-major, then image."""
    chunks = per_image.split(num_loc, dim=1)
    return torch.cat([c.reshape(-1, *per_image.shape[2:]) for c in chunks], dim=0)


def flatten_predictions(per_level: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (N, C, H_l, W_l) -> (sum_l N*H_l*W_l, C), level-major, same order as the
    targets."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.size(1)) for x in per_level], dim=0)
