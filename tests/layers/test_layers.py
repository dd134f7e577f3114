import math

import pytest
import torch

from condinst_percep.layers import IOULoss, aligned_bilinear, dice_coefficient
from condinst_percep.layers.losses import compute_ious


def _naive_aligned_bilinear(t, f):
    """Output pixel j samples input coordinate (j - f//2) / f, clamped to [0, size - 1]."""
    n, c, h, w = t.shape
    out = torch.zeros(n, c, f * h, f * w, dtype=torch.float64)
    src = t.double()
    for j in range(f * h):
        y = min(max((j - f // 2) / f, 0.0), h - 1)
        y0 = int(math.floor(y))
        y1, wy = min(y0 + 1, h - 1), y - y0
        for i in range(f * w):
            x = min(max((i - f // 2) / f, 0.0), w - 1)
            x0 = int(math.floor(x))
            x1, wx = min(x0 + 1, w - 1), x - x0
            out[:, :, j, i] = (
                src[:, :, y0, x0] * (1 - wy) * (1 - wx)
                + src[:, :, y0, x1] * (1 - wy) * wx
                + src[:, :, y1, x0] * wy * (1 - wx)
                + src[:, :, y1, x1] * wy * wx
            )
    return out


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_aligned_bilinear_matches_per_pixel_formula(factor):
    t = torch.randn(2, 3, 5, 7)
    got = aligned_bilinear(t, factor)
    assert got.shape == (2, 3, 5 * factor, 7 * factor)
    torch.testing.assert_close(got.double(), _naive_aligned_bilinear(t, factor), atol=1e-5, rtol=0)


def test_aligned_bilinear_identity_one_pixel_and_bad_args():
    t = torch.randn(1, 1, 4, 4)
    assert aligned_bilinear(t, 1) is t
    one = torch.full((1, 1, 1, 1), 3.0)
    assert torch.equal(aligned_bilinear(one, 4), torch.full((1, 1, 4, 4), 3.0))
    with pytest.raises(ValueError, match="factor"):
        aligned_bilinear(t, 1.5)
    with pytest.raises(ValueError, match="shape"):
        aligned_bilinear(torch.zeros(4, 4), 2)


def test_dice_closed_form_and_edge_cases():
    x = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inter = 0.5 + 1.0
    union = (0.25 + 1.0 + 0.0625) + 2.0 + 1e-5
    assert dice_coefficient(x, t).item() == pytest.approx(1 - 2 * inter / union, rel=1e-6)
    # perfect prediction -> ~0; empty target and empty prediction -> 1 (eps keeps it finite)
    assert dice_coefficient(t, t).item() == pytest.approx(1 - 4 / (4 + 1e-5), abs=1e-7)
    assert dice_coefficient(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)).item() == 1.0
    assert dice_coefficient(torch.rand(4, 1, 6, 6), torch.ones(4, 1, 6, 6)).shape == (4,)


def _naive_iou_giou(p, t):
    """Boxes around the origin from (l, t, r, b); IoU smoothed by +1, GIoU from the hull."""
    def box(d):
        return (-d[0], -d[1], d[2], d[3])

    a, b = box(p), box(t)
    area = lambda q: (q[2] - q[0]) * (q[3] - q[1])  # noqa: E731
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = (inter + 1) / (union + 1)
    return iou, iou - (hull - union) / hull


def test_ious_and_iou_loss_types_against_box_geometry():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(20, 4, generator=gen, dtype=torch.float64) * 5
    target = torch.rand(20, 4, generator=gen, dtype=torch.float64) * 5 + 0.1
    weight = torch.rand(20, generator=gen, dtype=torch.float64)
    ref = [_naive_iou_giou(p, t) for p, t in zip(pred.tolist(), target.tolist())]
    ious = torch.tensor([r[0] for r in ref], dtype=torch.float64)
    gious = torch.tensor([r[1] for r in ref], dtype=torch.float64)
    got_iou, got_giou = compute_ious(pred, target)
    torch.testing.assert_close(got_iou, ious)
    torch.testing.assert_close(got_giou, gious)
    torch.testing.assert_close(IOULoss("giou")(pred, target, weight), ((1 - gious) * weight).sum())
    torch.testing.assert_close(IOULoss("iou")(pred, target), (-ious.log()).sum())
    torch.testing.assert_close(IOULoss("linear_iou")(pred, target), (1 - ious).sum())
    # identical boxes: iou = giou = 1 exactly
    same = IOULoss("giou")(target, target)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        IOULoss("diou")
