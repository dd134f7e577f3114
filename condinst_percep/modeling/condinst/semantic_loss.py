"""The auxiliary semantic segmentation loss of CondInst's mask branch (AdelaiDet's ``_sem`` models).

A per-class sigmoid map predicted from the mask branch's first input feature is trained with a
focal loss against "thing" semantic targets built from the instance masks: each pixel takes the
class of the smallest GT mask covering it, or background.
"""

from __future__ import annotations

import torch

from ...layers import sigmoid_focal_loss


def semantic_targets(
    gt_masks: list[torch.Tensor],
    gt_classes: list[torch.Tensor],
    padded_size: tuple[int, int],
    stride: int,
) -> torch.Tensor:
    """Semantic labels on the padded canvas sampled at ``[stride // 2 :: stride]`` per axis.

    Args:
        gt_masks: per image bool (G_i, H_i, W_i), the masks at the image's size (H_i <= Hp,
            W_i <= Wp; the padding is background).
        gt_classes: per image int64 (G_i,), 0-based classes.
        padded_size: (Hp, Wp), multiples of ``stride``.
        stride: the stride of the semantic logits.

    Returns:
        int64 (N, Hp / stride, Wp / stride): 0 for background, else 1 + the class of the covering
        mask with the smallest area (in full-resolution pixels; on equal areas the first of them
        in the image's GT order). An image without GT is all background (AdelaiDet fails on it).
    """
    hp, wp = padded_size
    start = stride // 2
    out = []
    for masks, classes in zip(gt_masks, gt_classes):
        target = torch.zeros((hp // stride, wp // stride), dtype=torch.int64, device=masks.device)
        if len(masks):
            areas = masks.flatten(1).sum(dim=1).float()
            sampled = masks[:, start::stride, start::stride]
            # The smallest covering mask wins: uncovered pixels get an infinite area.
            area_map = torch.where(sampled, areas[:, None, None], torch.inf)
            min_area, owner = area_map.min(dim=0)
            labels = torch.where(torch.isinf(min_area), 0, classes[owner] + 1)
            target[: labels.shape[0], : labels.shape[1]] = labels
        out.append(target)
    return torch.stack(out)


def semantic_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Sigmoid focal loss of ``logits`` float (N, C, h, w) against one-hot ``targets`` int64
    (N, h, w) (0 = background, c + 1 = class c), summed and divided by the number of positive
    pixels of this process's batch (at least 1). Returns a float32 scalar."""
    classes = torch.arange(1, logits.shape[1] + 1, device=targets.device)[:, None, None]
    one_hot = (targets[:, None] == classes).to(torch.float32)
    num_pos = one_hot.sum().clamp(min=1.0)
    loss = sigmoid_focal_loss(logits.float(), one_hot, alpha=alpha, gamma=gamma, reduction="sum")
    return loss / num_pos
