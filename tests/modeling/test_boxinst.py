"""BoxInst's losses and targets against closed forms and per-pixel loops written from the
paper / AdelaiDet's definitions (the peer-env test compares with AdelaiDet itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from condinst_percep.modeling.condinst.boxinst_loss import (
    BoxInstLosses,
    pairwise_term,
    projection_term,
    unfold_wo_center,
)
from condinst_percep.modeling.condinst.boxinst_targets import (
    BoxInstTargets,
    box_masks,
    images_color_similarity,
    rgb_to_lab,
)
from condinst_percep.structures import Instances


def neighbours(size: int, dilation: int) -> list[tuple[int, int]]:
    r = size // 2
    return [
        (dy * dilation, dx * dilation)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if (dy, dx) != (0, 0)
    ]


def dice(x: list[float], t: list[float]) -> float:
    inter = sum(a * b for a, b in zip(x, t))
    return 1 - 2 * inter / (sum(a * a for a in x) + sum(b * b for b in t) + 1e-5)


def test_projection_term_is_the_dice_of_the_axis_projections():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 1, 5, 7, generator=gen, dtype=torch.float64)
    boxes = torch.zeros(3, 1, 5, 7, dtype=torch.float64)
    boxes[0, 0, 1:4, 2:6] = 1
    boxes[1, 0, 0:5, 0:1] = 1
    boxes[2, 0, 2:3, 3:7] = 1
    expected = 0.0
    for k in range(3):
        s, b = scores[k, 0].tolist(), boxes[k, 0].tolist()
        over_rows = [max(s[y][x] for y in range(5)) for x in range(7)]
        over_cols = [max(s[y][x] for x in range(7)) for y in range(5)]
        box_rows = [max(b[y][x] for y in range(5)) for x in range(7)]
        box_cols = [max(b[y][x] for x in range(7)) for y in range(5)]
        expected += dice(over_rows, box_rows) + dice(over_cols, box_cols)
    assert projection_term(scores, boxes).item() == pytest.approx(expected / 3, rel=1e-12)


@pytest.mark.parametrize("size, dilation", [(3, 2), (3, 1), (5, 1)])
def test_pairwise_term_is_minus_log_same_label_probability(size, dilation):
    gen = torch.Generator().manual_seed(1)
    logits = 6 * torch.randn(2, 1, 6, 7, generator=gen, dtype=torch.float64)
    out = pairwise_term(logits, size, dilation)
    offsets = neighbours(size, dilation)
    assert out.shape == (2, len(offsets), 6, 7)
    p = torch.sigmoid(logits)
    for n in range(2):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(6):
                for x in range(7):
                    j = (y + dy, x + dx)
                    if 0 <= j[0] < 6 and 0 <= j[1] < 7:
                        pi, pj = p[n, 0, y, x].item(), p[n, 0, j[0], j[1]].item()
                        want = -math.log(pi * pj + (1 - pi) * (1 - pj))
                    else:
                        # Zero-padded log-probabilities: P(same) = p_i + (1 - p_i) = 1.
                        want = 0.0
                    assert out[n, k, y, x].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_pairwise_term_is_finite_for_saturated_logits():
    logits = torch.tensor([[[[80.0, -80.0, 80.0]]]], requires_grad=True)
    out = pairwise_term(logits, 3, 1)
    assert torch.isfinite(out).all()
    # Opposite confident labels side by side: P(same) = 2 s(80) s(-80) ~ 2 e^-80.
    assert out[0, 4, 0, 0].item() == pytest.approx(80.0 - math.log(2), rel=1e-5)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_unfold_wo_center_order_and_even_size():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = unfold_wo_center(x, 3, 1)
    assert out[0, 0, :, 1, 1].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="PAIRWISE.SIZE must be odd"):
        unfold_wo_center(x, 2, 1)


def test_color_similarity_against_a_loop():
    gen = torch.Generator().manual_seed(2)
    lab = 20 * torch.rand(3, 5, 6, generator=gen)
    valid = torch.ones(5, 6)
    valid[4] = 0
    out = images_color_similarity(lab, valid, 3, 2)
    for k, (dy, dx) in enumerate(neighbours(3, 2)):
        for y in range(5):
            for x in range(6):
                j = (y + dy, x + dx)
                want = 0.0
                if 0 <= j[0] < 5 and 0 <= j[1] < 6 and valid[j]:
                    dist = torch.linalg.vector_norm(lab[:, y, x] - lab[:, j[0], j[1]]).item()
                    want = math.exp(-dist / 2)
                assert out[k, y, x].item() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_lab_of_reference_colours():
    """sRGB (D65) → CIE-LAB of white, black and the primaries, as published, and of a grey
    by the closed form L = 116 Y^(1/3) - 16, Y the linearised sRGB value."""
    rgb = torch.tensor([[255, 0, 255, 0, 0, 119], [255, 0, 0, 255, 0, 119], [255, 0, 0, 0, 255, 119]])
    lab = rgb_to_lab(rgb.to(torch.uint8).view(3, 1, 6))[:, 0].T
    expected = torch.tensor([
        [100.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [53.2408, 80.0925, 67.2032],
        [87.7347, -86.1827, 83.1793],
        [32.2970, 79.1875, -107.8602],
        [116 * ((119 / 255 + 0.055) / 1.055) ** (2.4 / 3) - 16, 0.0, 0.0],
    ])
    torch.testing.assert_close(lab, expected, rtol=0, atol=2e-2)


def test_box_masks_follow_adelaidets_integer_slices():
    boxes = torch.tensor([[0.0, 0.0, 3.0, 2.0], [2.7, 1.2, 5.9, 4.99], [4.0, 3.0, 9.5, 9.0]])
    out = box_masks(boxes, (8, 10))
    for box, mask in zip(boxes, out):
        ref = torch.zeros(8, 10, dtype=torch.bool)
        ref[int(box[1]) : int(box[3] + 1), int(box[0]) : int(box[2] + 1)] = True
        assert torch.equal(mask, ref)


def targets_for(images, boxes, heights, image_format="BGR", removed=10):
    targets = BoxInstTargets(
        mask_out_stride=4, bottom_pixels_removed=removed, pairwise_size=3,
        pairwise_dilation=2, image_format=image_format,
    )
    gts = [
        Instances(im.shape[-2:], gt_boxes=b, gt_classes=torch.zeros(len(b), dtype=torch.int64))
        for im, b in zip(images, boxes)
    ]
    records = [{"image": im, "height": h} for im, h in zip(images, heights)]
    targets(gts, records, (32, 40))
    return gts


def test_targets_remove_scaled_bottom_rows_and_padding():
    """Input 24 px high from an original of 48: int(10 * 24 / 48) = 5 rows get no pairs."""
    image = torch.full((3, 24, 36), 128, dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 4.0, 20.0, 16.0], [0.0, 0.0, 35.9, 23.9]])
    (gt,) = targets_for([image], [boxes], [48])
    assert gt.gt_bitmasks.shape == (2, 8, 10)
    assert gt.image_color_similarity.shape == (2, 8, 8, 10)
    sim = gt.image_color_similarity[0]
    valid = torch.zeros(32, 40)
    valid[:19, :36] = 1
    expected = unfold_wo_center(valid[2::4, 2::4][None, None], 3, 2)[0, 0]
    # A flat image: similarity 1 wherever the neighbour is valid, for centres in the image
    # (pooled rows 0..5, columns 0..8); a centre in the black padding differs from its
    # valid grey neighbours.
    torch.testing.assert_close(sim[:, :6, :9], expected[:, :6, :9])
    assert 0 < sim[3, 2, 9] < 0.5 and expected[3, 2, 9] == 1
    torch.testing.assert_close(gt.gt_bitmasks[0], box_masks(boxes, (32, 40))[0, 2::4, 2::4].float())
    centroid = box_masks(boxes[:1], (32, 40))[0].nonzero().float().mean(0).flip(0)
    torch.testing.assert_close(gt.gt_centroids[0], centroid)


def test_targets_read_the_image_format():
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (3, 32, 40), generator=gen, dtype=torch.uint8)
    boxes = torch.tensor([[1.0, 1.0, 30.0, 30.0]])
    (from_bgr,) = targets_for([rgb.flip(0)], [boxes], [32], "BGR")
    (from_rgb,) = targets_for([rgb], [boxes], [32], "RGB")
    torch.testing.assert_close(from_bgr.image_color_similarity, from_rgb.image_color_similarity)
    pooled = torch.nn.functional.avg_pool2d(rgb[None].float(), 4)[0].to(torch.uint8)
    lab = rgb_to_lab(pooled)
    valid = torch.ones(8, 10)
    valid[5:] = 0  # rows 22..31 removed: those sampled at 22, 26, 30
    torch.testing.assert_close(
        from_rgb.image_color_similarity[0], images_color_similarity(lab, valid, 3, 2)
    )


def test_losses_weights_threshold_and_warmup():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 1, 8, 10, generator=gen, requires_grad=True)
    bitmasks = torch.zeros(1, 8, 10)
    bitmasks[0, 2:6, 3:8] = 1
    similarity = torch.rand(1, 8, 8, 10, generator=gen)
    gt = Instances((32, 40), gt_bitmasks=bitmasks, image_color_similarity=similarity)
    inst = Instances(
        (32, 40), gt_inds=torch.tensor([0, 0]), im_inds=torch.tensor([0, 0])
    )
    losses = BoxInstLosses(pairwise_size=3, pairwise_dilation=2, color_thresh=0.3, warmup_iters=4)
    out = losses(logits, inst, [gt], torch.tensor([1.0]))
    pairwise = pairwise_term(logits.detach(), 3, 2)
    weights = ((similarity >= 0.3).float() * bitmasks[None]).expand(2, -1, -1, -1)
    expected = (pairwise * weights).sum() / weights.sum() * 0.25
    torch.testing.assert_close(out["loss_pairwise"], expected)
    torch.testing.assert_close(
        out["loss_prj"], projection_term(logits.detach().sigmoid(), bitmasks[None].expand(2, -1, -1, -1))
    )
    late = losses(logits, inst, [gt], torch.tensor([40.0]))
    torch.testing.assert_close(late["loss_pairwise"], expected * 4)


def test_losses_without_instances_stay_connected():
    logits = torch.zeros(0, 1, 8, 10, requires_grad=True)
    out = BoxInstLosses()(logits, Instances((32, 40), gt_inds=torch.zeros(0, dtype=torch.int64)), [], torch.ones(1))
    assert set(out) == {"loss_prj", "loss_pairwise"}
    sum(out.values()).backward()
    assert logits.grad is not None


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("SIZE", 4, r"PAIRWISE.SIZE = 4: must be odd"),
        ("DILATION", 0, r"PAIRWISE.DILATION = 0: must be >= 1"),
        ("WARMUP_ITERS", 0, r"PAIRWISE.WARMUP_ITERS = 0: must be >= 1"),
    ],
)
def test_bad_pairwise_settings_name_the_key(key, value, match):
    from condinst_percep.config import get_cfg
    from condinst_percep.config.validate import UnsupportedConfigError, collect_problems
    from condinst_percep.modeling.condinst.boxinst_loss import check_boxinst_cfg

    cfg = get_cfg()
    cfg.MODEL.BOXINST.PAIRWISE[key] = value
    with pytest.raises(UnsupportedConfigError, match=match):
        collect_problems(cfg, [check_boxinst_cfg])


def test_validate_cfg_names_bad_boxinst_keys():
    from condinst_percep.config import get_cfg
    from condinst_percep.config.validate import UnsupportedConfigError
    from condinst_percep.engine import validate_cfg

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BOXINST.ENABLED = True
    validate_cfg(cfg)
    cfg.MODEL.BOXINST.PAIRWISE.SIZE = 4
    cfg.MODEL.BOXINST.PAIRWISE.COLOR_THRESH = 1.5
    with pytest.raises(UnsupportedConfigError) as err:
        validate_cfg(cfg)
    assert [p.split(" = ")[0] for p in err.value.problems] == [
        "MODEL.BOXINST.PAIRWISE.SIZE", "MODEL.BOXINST.PAIRWISE.COLOR_THRESH"
    ]
