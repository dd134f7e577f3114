import pytest
import torch

from condinst_percep.layers import batched_nms, nms
from condinst_percep.structures import pairwise_iou


def _naive_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    if inter <= 0:
        return 0.0
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _naive_batched_nms(boxes, scores, idxs, thr):
    """Textbook greedy loop; ties visited in input order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(idxs[k] != idxs[i] or _naive_iou(boxes[k], boxes[i]) <= thr for k in kept):
            kept.append(i)
    return kept


def _random_boxes(n, gen, span=40.0):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * span
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20 + 1
    return torch.cat([xy, xy + wh], dim=1).float()


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_greedy_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 150
    boxes = _random_boxes(n, gen)
    # few distinct score values, so many ties; duplicated boxes, so many exact-IoU-1 pairs
    scores = torch.randint(0, 6, (n,), generator=gen).float() / 5
    boxes[n // 2 :: 7] = boxes[n // 2 - 10 : n // 2 - 10 + len(boxes[n // 2 :: 7])]
    idxs = torch.randint(0, 3, (n,), generator=gen)
    for thr in (0.3, 0.5, 0.7):
        expected = _naive_batched_nms(boxes.double().tolist(), scores.tolist(), idxs.tolist(), thr)
        got = batched_nms(boxes, scores, idxs, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == expected


def test_long_suppression_chain_is_resolved_exactly():
    # each box overlaps only its neighbours: greedy keeps every other box (a chain of n)
    n = 41
    x = torch.arange(n, dtype=torch.float32) * 5
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
    scores = torch.linspace(1, 0.1, n)
    keep = nms(boxes, scores, 0.3)
    assert keep.tolist() == list(range(0, n, 2))
    # reversing the scores reverses which end of the chain wins
    keep = nms(boxes, scores.flip(0), 0.3)
    assert keep.tolist() == list(range(n - 1, -1, -2))


def test_classes_do_not_suppress_each_other_and_edge_cases():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5).tolist() == [1]
    # IoU exactly at the threshold is kept (suppression needs IoU > threshold)
    half = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    assert nms(half, torch.tensor([1.0, 0.5]), 0.5).tolist() == [0, 1]
    assert nms(half, torch.tensor([1.0, 0.5]), 0.49).tolist() == [0]
    # zero-area boxes never suppress or get suppressed
    flat = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert nms(flat, torch.tensor([0.2, 0.3]), 0.5).tolist() == [1, 0]
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


def test_bf16_boxes_use_float32_iou():
    gen = torch.Generator().manual_seed(0)
    boxes = _random_boxes(60, gen)
    scores = torch.rand(60, generator=gen)
    idxs = torch.zeros(60, dtype=torch.long)
    got = batched_nms(boxes.bfloat16(), scores, idxs, 0.5)
    ref = _naive_batched_nms(boxes.bfloat16().double().tolist(), scores.tolist(), idxs.tolist(), 0.5)
    assert got.tolist() == ref


def test_threshold_is_compared_in_double_precision_like_torchvision():
    # float32(0.6) = 0.6000000238 > 0.6: a float32 IoU equal to it must be suppressed at 0.6.
    iou_f32 = torch.tensor(0.6, dtype=torch.float32).item()
    assert iou_f32 > 0.6
    # two boxes whose float32 IoU is exactly float32(0.6): inter 6, union 10
    boxes = torch.tensor([[0.0, 0.0, 8.0, 1.0], [2.0, 0.0, 10.0, 1.0]])
    assert pairwise_iou(boxes[:1], boxes[1:]).item() == iou_f32
    assert nms(boxes, torch.tensor([1.0, 0.5]), 0.6).tolist() == [0]
    assert nms(boxes, torch.tensor([1.0, 0.5]), iou_f32).tolist() == [0, 1]
