"""Exact class-aware non-maximum suppression in pure torch (no torchvision, nothing compiled).

Greedy NMS visits boxes by decreasing score and keeps a box unless a kept box of the same class
overlaps it with IoU > ``iou_threshold``. Ties in score are visited in input order (a stable
sort, lower index first), which is what torchvision's kernels do.

On a GPU, the textbook loop needs one host synchronisation per box. Here the whole IoU matrix
is computed at once, and the greedy recursion ``keep[j] = not any(keep[i] and S[i, j], i < j)``
is solved by fixed-point iteration from "keep everything" (as in Cluster-NMS, Zheng et al.
2021). Its unique fixed point is the greedy answer; after ``t`` rounds every box whose chain of
suppressors ``i1 -> i2 -> ... -> j`` is shorter than ``t`` is final, so the number of rounds is
the length of the longest suppression chain (a handful in practice), independent of the number
of boxes, and convergence is checked on the host only once per ``_ROUNDS_PER_CHECK`` rounds.
(An algorithm with fewer sequential steps in the worst case is not to be expected: the greedy
answer is the lexicographically first maximal independent set, which is P-complete.)

Memory is ``O(n^2)`` for ``n`` boxes (a few bytes per pair); CondInst calls it with at most
``PRE_NMS_TOPK x #levels`` boxes per image.
"""

from __future__ import annotations

import math

import torch

from ..structures.boxes import pairwise_iou

_ROUNDS_PER_CHECK = 4


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic greedy NMS. ``boxes`` (N, 4) XYXY, ``scores`` (N,).

    Returns the int64 indices of the kept boxes, sorted by decreasing score (ties: lower index
    first).
    """
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy NMS run independently per category ``idxs``; boxes of different categories
    never suppress each other.

    Args:
        boxes: (N, 4) XYXY, any float dtype; IoUs are computed in float32 (like detectron2).
        scores: (N,) scores.
        idxs: (N,) integer category of each box.
        iou_threshold: a box is suppressed by a kept box of its category if IoU > threshold.

    Returns:
        int64 (K,) indices into the inputs, sorted by decreasing score, ties by lower index.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"batched_nms: scores {tuple(scores.shape)} and idxs {tuple(idxs.shape)} must have "
            f"shape ({boxes.shape[0]},) like the boxes"
        )
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    sorted_boxes = boxes[order].float()
    sorted_idxs = idxs[order]
    n = order.numel()
    # suppresses[i, j]: box i (higher in the order) would suppress box j if i is kept.
    threshold = _float32_below(iou_threshold).to(sorted_boxes.device)
    suppresses = (pairwise_iou(sorted_boxes, sorted_boxes) > threshold) & (
        sorted_idxs[:, None] == sorted_idxs[None, :]
    )
    suppresses.triu_(diagonal=1)
    keep = _greedy_fixed_point(suppresses, n)
    return order[keep]


def _float32_below(x: float) -> torch.Tensor:
    """The largest float32 <= ``x``: for a float32 IoU ``v``, ``v > result`` exactly when
    ``v > x`` in double precision, as torchvision's kernels compare. (``tensor > x`` would
    round ``x`` to float32 first, which can round it up.)"""
    t = torch.tensor(x, dtype=torch.float32)
    if float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf))
    return t


def _greedy_fixed_point(suppresses: torch.Tensor, n: int) -> torch.Tensor:
    """Solves ``keep[j] = not any_i(keep[i] & suppresses[i, j])`` for a strictly upper
    triangular ``suppresses`` (n, n); returns the bool ``keep`` (n,)."""
    keep = torch.ones(n, dtype=torch.bool, device=suppresses.device)
    if not bool(suppresses.any()):
        return keep
    suppress_f = suppresses.float()
    for _ in range(0, n + 1, _ROUNDS_PER_CHECK):
        previous = keep
        for _ in range(_ROUNDS_PER_CHECK):
            # A matrix-vector product counts the kept suppressors of every box at once.
            keep = (keep.float() @ suppress_f) == 0
        if torch.equal(keep, previous):
            break
    return keep
