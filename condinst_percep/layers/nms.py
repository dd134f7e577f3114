"""Exact class-aware non-maximum suppression in pure torch (no torchvision, nothing compiled).

Greedy NMS visits boxes by decreasing score and keeps a box unless a kept box of the same class
overlaps it with IoU > ``iou_threshold``. Ties in score are visited in input order (a stable
sort, lower index first), which is what torchvision's kernels do. IoUs are float32, with
torchvision's arithmetic (:func:`~condinst_percep.structures.pairwise_iou`), and compared with
the threshold in double precision, as torchvision compares.

Two algorithms give that same answer:

- CPU (:func:`_greedy_sparse`): IoUs only between boxes of the same category (grouped by a
  stable sort, in chunks of ``_PAIRS_PER_CHUNK`` pairs); the pairs above the threshold are the
  edges of the suppression graph, and the greedy recursion below is solved on those edges
  alone. Work is ``O(sum_c n_c^2)`` elementwise for ``n_c`` boxes of category ``c`` instead of
  the full ``O(n^2)`` matrix and its matrix products; 1.1-1.2x torchvision's compiled kernel at
  1000-5000 candidates (``benchmarks/bench_nms.py``).
- CUDA (:func:`_greedy_matrix`): the whole IoU matrix at once and the greedy recursion
  ``keep[j] = not any(keep[i] and S[i, j], i < j)`` solved by fixed-point iteration from "keep
  everything" (as in Cluster-NMS, Zheng et al. 2021), which reads the device only once per
  ``_ROUNDS_PER_CHECK`` rounds. Its unique fixed point is the greedy answer; after ``t`` rounds
  every box whose chain of suppressors ``i1 -> i2 -> ... -> j`` is shorter than ``t`` is final,
  so the number of rounds is the length of the longest suppression chain (a handful in
  practice). (Fewer sequential steps in the worst case are not to be expected: the greedy answer
  is the lexicographically first maximal independent set, which is P-complete.) Memory is
  ``O(n^2)`` (a few bytes per pair); CondInst calls it with at most ``PRE_NMS_TOPK x #levels``.

OpenCV's ``cv2.dnn.NMSBoxes``/``NMSBoxesBatched`` (compiled, and a dependency already) is not
used: it computes IoUs in double precision and rounds ``1 - (1 - IoU)`` to float, so its kept set
differs from the float32 greedy reference at IoUs near the threshold, and it suppresses equal
zero-area boxes, which torchvision keeps (``benchmarks/bench_nms.py`` counts the differences).
"""

from __future__ import annotations

import math

import torch

from ..structures.boxes import box_iou, pairwise_iou

_ROUNDS_PER_CHECK = 4
# Box pairs per chunk of the CPU algorithm: bounds its work memory (~100 bytes a pair).
_PAIRS_PER_CHUNK = 1 << 20


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
    threshold = _float32_below(iou_threshold).to(sorted_boxes.device)
    greedy = _greedy_matrix if boxes.is_cuda else _greedy_sparse
    return order[greedy(sorted_boxes, sorted_idxs, threshold)]


def _float32_below(x: float) -> torch.Tensor:
    """The largest float32 <= ``x``: for a float32 IoU ``v``, ``v > result`` exactly when
    ``v > x`` in double precision, as torchvision's kernels compare. (``tensor > x`` would
    round ``x`` to float32 first, which can round it up.)"""
    t = torch.tensor(x, dtype=torch.float32)
    if float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf))
    return t


def _suppression(
    boxes1: torch.Tensor, idxs1: torch.Tensor, boxes2: torch.Tensor, idxs2: torch.Tensor,
    threshold: torch.Tensor,
) -> torch.Tensor:
    """(N, M) bool: box ``i`` of ``boxes1`` would suppress box ``j`` of ``boxes2`` (same
    category, IoU > threshold)."""
    return (pairwise_iou(boxes1, boxes2) > threshold) & (idxs1[:, None] == idxs2[None, :])


def _greedy_matrix(
    boxes: torch.Tensor, idxs: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """Greedy NMS of boxes already in visiting order, float32 (n, 4), categories (n,), from the
    full suppression matrix; returns the bool ``keep`` (n,)."""
    suppresses = _suppression(boxes, idxs, boxes, idxs, threshold)
    suppresses.triu_(diagonal=1)
    return _greedy_fixed_point(suppresses)


def _greedy_sparse(
    boxes: torch.Tensor, idxs: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """Same answer as :func:`_greedy_matrix`, from the suppression edges only (see the module
    docstring): boxes already in visiting order, float32 (n, 4), categories (n,); returns the
    bool ``keep`` (n,)."""
    n = len(boxes)
    # Boxes grouped by category (stable: visiting order inside each), so that the same-category
    # partners of a box are the contiguous run after it.
    by_category = torch.sort(idxs, stable=True).indices
    grouped, grouped_idxs = boxes[by_category], idxs[by_category]
    run_end = torch.searchsorted(grouped_idxs, grouped_idxs, right=True)
    partners = run_end - torch.arange(1, n + 1)
    row_end = torch.cumsum(partners, 0)  # a row's pairs: [row_end - partners, row_end)
    row_start = row_end - partners
    sources, targets = [], []
    first = 0
    while first < n:
        # The rows whose pairs fit in one chunk (at least one row).
        chunk_start = int(row_start[first])
        last = int(torch.searchsorted(row_end, chunk_start + _PAIRS_PER_CHUNK, right=True))
        rows = torch.arange(first, min(max(last, first + 1), n))
        row = torch.repeat_interleave(rows, partners[rows])
        col = row + 1 + torch.arange(chunk_start, chunk_start + len(row)) - row_start[row]
        hit = box_iou(grouped[row], grouped[col]) > threshold
        sources.append(row[hit])
        targets.append(col[hit])
        first = int(rows[-1]) + 1
    source, target = by_category[torch.cat(sources)], by_category[torch.cat(targets)]
    keep = torch.ones(n, dtype=torch.bool)
    for _ in range(n + 1):
        kept_suppressors = torch.zeros(n, dtype=torch.int32).index_add_(
            0, target, keep[source].int()
        )
        new_keep = kept_suppressors == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _greedy_fixed_point(suppresses: torch.Tensor) -> torch.Tensor:
    """Solves ``keep[j] = not any_i(keep[i] & suppresses[i, j])`` for a strictly upper
    triangular bool ``suppresses`` (n, n); returns the bool ``keep`` (n,)."""
    n = len(suppresses)
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
