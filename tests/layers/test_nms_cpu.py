"""The CPU NMS (edges between same-category boxes only) and the CUDA path's full-matrix algorithm
run on the CPU, both against a textbook greedy loop in float32 scalar arithmetic (torchvision's
kernel, operation for operation): ties, equal boxes, many categories, thousands of boxes, IoUs
where float32 and float64 disagree, and several pair chunks."""
import importlib

import numpy as np
import pytest
import torch

from condinst_percep.layers import batched_nms, nms
from condinst_percep.layers.nms import _float32_below, _greedy_matrix

# (the package's ``layers.nms`` attribute is the function)
nms_module = importlib.import_module("condinst_percep.layers.nms")

f32 = np.float32


def _iou32(a, b):
    """torchvision's CPU kernel for one pair, in float32 scalars."""
    w = max(f32(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(f32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    if not inter > 0:
        return f32(0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _naive(boxes, scores, idxs, thr):
    """Greedy loop, ties in input order; the IoU compared with the threshold in double."""
    b = [tuple(f32(v) for v in row) for row in boxes.numpy()]
    s, c = scores.tolist(), idxs.tolist()
    kept = []
    for i in sorted(range(len(s)), key=lambda i: (-s[i], i)):
        if all(c[k] != c[i] or float(_iou32(b[k], b[i])) <= thr for k in kept):
            kept.append(i)
    return kept


def _matrix(boxes, scores, idxs, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[_greedy_matrix(boxes[order].float(), idxs[order], _float32_below(thr))].tolist()


def _clustered(n, num_classes, seed, objects=12, span=200.0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=gen) * span
    obj = torch.randint(0, objects, (n,), generator=gen)
    xy = centres[obj] + torch.randn(n, 2, generator=gen) * 6
    wh = torch.rand(n, 2, generator=gen) * 40 + 2
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    # few distinct scores: many ties; some exact copies of other boxes
    scores = torch.randint(0, 8, (n,), generator=gen).float() / 7
    copies = torch.randint(0, n, (n // 10,), generator=gen)
    boxes[torch.randint(0, n, (n // 10,), generator=gen)] = boxes[copies]
    classes = (obj + torch.randint(0, 2, (n,), generator=gen) * objects) % num_classes
    return boxes, scores, classes


@pytest.mark.parametrize(
    "n, num_classes, seed", [(1, 1, 0), (40, 1, 1), (300, 3, 2), (1000, 1, 3), (2000, 80, 4)]
)
def test_both_algorithms_equal_the_float32_loop(n, num_classes, seed):
    boxes, scores, classes = _clustered(n, num_classes, seed)
    for thr in (0.3, 0.6):
        expected = _naive(boxes, scores, classes, thr)
        assert batched_nms(boxes, scores, classes, thr).tolist() == expected
        assert _matrix(boxes, scores, classes, thr) == expected


def test_several_pair_chunks_give_the_same_answer(monkeypatch):
    boxes, scores, classes = _clustered(500, 4, 5)
    expected = _naive(boxes, scores, classes, 0.5)
    for pairs in (1, 7, 1000):  # 1: one row per chunk; rows with more pairs than a chunk
        monkeypatch.setattr(nms_module, "_PAIRS_PER_CHUNK", pairs)
        assert batched_nms(boxes, scores, classes, 0.5).tolist() == expected


def _pairs_where_float32_and_float64_disagree(count):
    """Box pairs and thresholds at which the float32 IoU is suppressed and the float64 one is not
    (first), or the reverse (second)."""
    rng = np.random.default_rng(0)
    found = {True: [], False: []}
    while min(len(v) for v in found.values()) < count:
        b = (rng.random((2, 4)) * 100).astype(f32)
        b[:, 2:] = b[:, :2] + (rng.random((2, 2)) * 50 + 1).astype(f32)
        iou32 = float(_iou32(tuple(b[0]), tuple(b[1])))
        d = b.astype(np.float64)
        w = max(0.0, min(d[0, 2], d[1, 2]) - max(d[0, 0], d[1, 0]))
        h = max(0.0, min(d[0, 3], d[1, 3]) - max(d[0, 1], d[1, 1]))
        areas = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
        iou64 = w * h / (areas.sum() - w * h)
        if iou32 > 0 and iou32 != iou64:
            thr = min(iou32, iou64)  # the larger one is suppressed, the smaller not
            found[iou32 > iou64].append((torch.from_numpy(b), thr))
    return found


def test_iou_is_float32_like_torchvision_where_float64_disagrees():
    found = _pairs_where_float32_and_float64_disagree(5)
    scores = torch.tensor([0.9, 0.8])
    for boxes, thr in found[True]:  # float32 IoU above the threshold: suppressed
        assert nms(boxes, scores, thr).tolist() == [0]
        assert _naive(boxes, scores, torch.zeros(2, dtype=torch.long), thr) == [0]
    for boxes, thr in found[False]:  # float32 IoU at the threshold: kept
        assert nms(boxes, scores, thr).tolist() == [0, 1]
        assert _matrix(boxes, scores, torch.zeros(2, dtype=torch.long), thr) == [0, 1]


def test_equal_boxes_ties_and_categories():
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([box] * 6)
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.9, 0.5])
    classes = torch.tensor([0, 1, 0, 1, 0, 2])
    # per category the best, the lowest index among equal scores; output by score then index
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [1, 2, 5]
    assert _matrix(boxes, scores, classes, 0.5) == [1, 2, 5]
    # category ids need not be contiguous or non-negative
    assert batched_nms(boxes, scores, classes * 1000 - 7, 0.5).tolist() == [1, 2, 5]
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.tolist() == [] and empty.dtype == torch.int64
