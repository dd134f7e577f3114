import math

import pytest
import torch

from condinst_percep.modeling.fcos import (
    FCOSHead,
    FCOSOutputs,
    compute_locations,
    compute_targets,
    mask_centroids,
)
from condinst_percep.structures import Instances

NUM_CLASSES = 5


def _gt(boxes, classes, centroids=None):
    inst = Instances((64, 64), gt_boxes=torch.tensor(boxes, dtype=torch.float32),
                     gt_classes=torch.tensor(classes, dtype=torch.int64))
    if centroids is not None:
        inst.gt_centroids = torch.tensor(centroids, dtype=torch.float32)
    return inst


def _targets_at(points, strides, soi, gts, center_sample=True):
    """Targets with explicit per-level location lists (one list of points per level)."""
    locations = [torch.tensor(p, dtype=torch.float32).reshape(-1, 2) for p in points]
    return compute_targets(locations, strides, soi, gts, NUM_CLASSES, center_sample, 1.5)


def test_locations_are_stride_centres_row_major():
    loc = compute_locations(2, 3, 8, torch.device("cpu"))
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_size_ranges_are_inclusive_at_both_ends():
    # Location (64, 64) inside box [0, 0, 128, 128]: distances (64, 64, 64, 64), max = 64 exactly.
    gts = [_gt([[0, 0, 128, 128]], [3])]
    t = _targets_at([[[64, 64]], [[64, 64]], [[64, 64]]], [8, 16, 32], [64, 128], gts, center_sample=False)
    assert t.labels.tolist() == [3, 3, NUM_CLASSES]  # [-1, 64] and [64, 128] both include 64
    assert t.fpn_levels.tolist() == [0, 1, 2]
    # Move the location by 0.5: max distance 64.5 leaves level 0's range.
    t = _targets_at([[[63.5, 64]], [[63.5, 64]]], [8, 16], [64], gts, center_sample=False)
    assert t.labels.tolist() == [NUM_CLASSES, 3]
    # (l, t, r, b) divided by the level's stride
    assert t.reg_targets[1].tolist() == [63.5 / 16, 64 / 16, 64.5 / 16, 64 / 16]


def test_centre_sampling_uses_mask_centroid_and_radius():
    # Box [0, 0, 100, 40]; mask centroid at (20, 20); stride 8 -> radius 12: sample box
    # [8, 32] x [8, 32] (clipped to the GT box), locations strictly inside.
    gts = [_gt([[0, 0, 100, 40]], [1], centroids=[[20, 20]])]
    pts = [[20, 20], [31.9, 20], [32, 20], [50, 20], [8, 20], [8.1, 8.1]]
    t = _targets_at([pts], [8], [], gts)
    assert t.labels.tolist() == [1, 1, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES, 1]
    # Without centroids the box centre (50, 20) is used.
    gts = [_gt([[0, 0, 100, 40]], [1])]
    assert _targets_at([pts], [8], [], gts).labels.tolist() == [NUM_CLASSES] * 3 + [1] + [NUM_CLASSES] * 2
    # The sample box is clipped to the GT box: a centroid at the box edge samples inside only.
    gts = [_gt([[10, 10, 30, 30]], [2], centroids=[[10, 20]])]
    t = _targets_at([[[9, 20], [10, 20], [11, 20], [21.9, 20], [22, 20]]], [8], [], gts)
    assert t.labels.tolist() == [NUM_CLASSES, NUM_CLASSES, 2, 2, NUM_CLASSES]


def test_smallest_area_wins_and_ties_go_to_the_lower_index():
    big, small = [0, 0, 60, 60], [10, 10, 40, 40]
    gts = [_gt([big, small], [1, 2]), _gt([small, [10, 10, 40, 40]], [3, 4])]
    t = _targets_at([[[25, 25]]], [8], [], gts, center_sample=False)
    assert t.labels.tolist() == [2, 3]
    # gt_inds index the batch's concatenated GTs: image 1's first GT is global index 2
    assert t.gt_inds.tolist() == [1, 2]
    assert t.im_inds.tolist() == [0, 1]


def test_first_gt_centred_at_x0_disables_the_whole_image():
    # AdelaiDet quirk: the first GT's centre x == 0 gives no positives, even for other GTs.
    gts = [
        _gt([[0, 0, 10, 10], [20, 20, 60, 60]], [1, 2], centroids=[[0, 5], [40, 40]]),
        _gt([[0, 0, 10, 10], [20, 20, 60, 60]], [1, 2], centroids=[[0.5, 5], [40, 40]]),
    ]
    t = _targets_at([[[40, 40], [4, 4]]], [8], [], gts)
    assert t.labels.tolist() == [NUM_CLASSES, NUM_CLASSES, 2, 1]


def test_level_major_flattening_and_image_without_gt():
    gts = [_gt([[0, 0, 64, 64]], [0]), _gt(torch.zeros(0, 4).tolist(), [])]
    t = _targets_at([[[8, 8], [24, 8]], [[16, 16]]], [8, 16], [64], gts, center_sample=False)
    # order: level 0 image 0 (2 locations), level 0 image 1, level 1 image 0, level 1 image 1
    assert t.im_inds.tolist() == [0, 0, 1, 1, 0, 1]
    assert t.fpn_levels.tolist() == [0, 0, 0, 0, 1, 1]
    assert t.locations.tolist() == [[8, 8], [24, 8], [8, 8], [24, 8], [16, 16], [16, 16]]
    assert t.labels.tolist() == [0, 0, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES]
    assert t.gt_inds.tolist()[2:4] == [-1, -1]


def test_mask_centroids_match_adelaidet_moments_on_the_padded_canvas():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 37, 53, generator=gen) > 0.6
    masks[3] = False  # empty mask: mass clamped, centre (0, 0)
    hp, wp = 64, 64
    full = torch.zeros(4, hp, wp)
    full[:, :37, :53] = masks.float()
    xs, ys = torch.arange(wp, dtype=torch.float32), torch.arange(hp, dtype=torch.float32)
    m00 = full.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    ref = torch.stack(
        ((full * xs).sum(dim=-1).sum(dim=-1) / m00, (full * ys[:, None]).sum(dim=-1).sum(dim=-1) / m00), 1
    )
    got = mask_centroids(masks, (hp, wp))
    assert torch.equal(got, ref)
    assert got[3].tolist() == [0.0, 0.0]
    naive = masks[0].nonzero().double().mean(dim=0).flip(0)
    torch.testing.assert_close(got[0].double(), naive, rtol=1e-6, atol=1e-5)


def _outputs(**kw):
    return FCOSOutputs(num_classes=NUM_CLASSES, strides=[8, 16], sizes_of_interest=[64], **kw)


def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    outputs = _outputs()
    n, sizes = 2, [(4, 4), (2, 2)]
    logits = [torch.randn(n, NUM_CLASSES, h, w) for h, w in sizes]
    reg = [torch.rand(n, 4, h, w) * 3 for h, w in sizes]
    ctr = [torch.randn(n, 1, h, w) for h, w in sizes]
    top = [torch.randn(n, 7, h, w) for h, w in sizes]
    locations = [compute_locations(h, w, s, torch.device("cpu")) for (h, w), s in zip(sizes, [8, 16])]
    gts = [_gt([[0, 0, 20, 24], [8, 6, 30, 30]], [1, 4]), _gt([[2, 2, 31, 31]], [0])]
    extras, losses = outputs.losses(logits, reg, ctr, locations, gts, top)

    t = compute_targets(locations, [8, 16], [64], gts, NUM_CLASSES)
    flat = lambda xs: torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in xs])  # noqa: E731
    lg, rg, ct, tp = flat(logits), flat(reg), flat(ctr)[:, 0], flat(top)
    pos = (t.labels != NUM_CLASSES).nonzero()[:, 0]
    assert len(pos) > 0
    onehot = torch.zeros_like(lg)
    onehot[pos, t.labels[pos]] = 1
    p = lg.sigmoid()
    ce = -(onehot * p.log() + (1 - onehot) * (1 - p).log())
    p_t = p * onehot + (1 - p) * (1 - onehot)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))).sum() / len(pos)
    torch.testing.assert_close(losses["loss_fcos_cls"], focal, rtol=1e-5, atol=1e-6)

    tg = t.reg_targets[pos]
    ctr_t = torch.sqrt(
        (tg[:, [0, 2]].min(1).values / tg[:, [0, 2]].max(1).values)
        * (tg[:, [1, 3]].min(1).values / tg[:, [1, 3]].max(1).values)
    )
    pr = rg[pos]
    inter = (torch.min(pr[:, 0], tg[:, 0]) + torch.min(pr[:, 2], tg[:, 2])) * (
        torch.min(pr[:, 1], tg[:, 1]) + torch.min(pr[:, 3], tg[:, 3])
    )
    area = lambda b: (b[:, 0] + b[:, 2]) * (b[:, 1] + b[:, 3])  # noqa: E731
    union = area(pr) + area(tg) - inter
    hull = (torch.max(pr[:, 0], tg[:, 0]) + torch.max(pr[:, 2], tg[:, 2])) * (
        torch.max(pr[:, 1], tg[:, 1]) + torch.max(pr[:, 3], tg[:, 3])
    )
    giou = (inter + 1) / (union + 1) - (hull - union) / hull
    torch.testing.assert_close(losses["loss_fcos_loc"], ((1 - giou) * ctr_t).sum() / ctr_t.sum())
    bce = -(ctr_t * ct[pos].sigmoid().log() + (1 - ctr_t) * (1 - ct[pos].sigmoid()).log())
    torch.testing.assert_close(losses["loss_fcos_ctr"], bce.sum() / len(pos))

    inst = extras["instances"]
    assert inst.pos_inds.tolist() == pos.tolist()
    assert torch.equal(inst.top_feats, tp[pos]) and torch.equal(extras["top_feats"], tp)
    torch.testing.assert_close(inst.gt_ctrs, ctr_t)
    assert set(inst.get_fields()) == {
        "labels", "gt_inds", "im_inds", "reg_targets", "locations", "fpn_levels",
        "logits_pred", "reg_pred", "ctrness_pred", "top_feats", "pos_inds", "gt_ctrs",
    }


@pytest.mark.parametrize("normalizer", ["fg", "moving_fg", "all"])
def test_class_loss_normalisers_match_adelaidets_python_floats_exactly(normalizer):
    """The normalisers stay on the device (no .item()); the values are AdelaiDet's, computed
    with Python floats and max(), bit for bit, over batches with and without positives."""
    from condinst_percep.layers import sigmoid_focal_loss

    torch.manual_seed(0)
    outputs = _outputs(loss_normalizer_cls=normalizer, loss_weight_cls=0.5)
    locations = [compute_locations(4, 4, 8, torch.device("cpu")), compute_locations(2, 2, 16, torch.device("cpu"))]
    batches = [
        [_gt([[0, 0, 20, 24], [8, 6, 30, 30]], [1, 4]), _gt([[2, 2, 31, 31]], [0])],
        [_gt(torch.zeros(0, 4).tolist(), []), _gt(torch.zeros(0, 4).tolist(), [])],
        [_gt([[1, 1, 15, 15]], [3]), _gt(torch.zeros(0, 4).tolist(), [])],
    ]
    moving = 100.0
    for gts in batches:
        logits = [torch.randn(2, NUM_CLASSES, h, w) for h, w in [(4, 4), (2, 2)]]
        reg = [torch.rand(2, 4, h, w) * 3 for h, w in [(4, 4), (2, 2)]]
        ctr = [torch.randn(2, 1, h, w) for h, w in [(4, 4), (2, 2)]]
        extras, losses = outputs.losses(logits, reg, ctr, locations, gts)

        t = compute_targets(locations, [8, 16], [64], gts, NUM_CLASSES)
        lg = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES) for x in logits])
        pos = (t.labels != NUM_CLASSES).nonzero()[:, 0]
        onehot = torch.zeros_like(lg)
        onehot[pos, t.labels[pos]] = 1
        total = sigmoid_focal_loss(lg, onehot, alpha=0.25, gamma=2.0, reduction="sum")
        num_pos = max(float(len(pos)), 1.0)
        if normalizer == "moving_fg":
            moving = 0.9 * moving + (1 - 0.9) * num_pos
            expected = total / moving
        elif normalizer == "fg":
            expected = total / num_pos
        else:
            expected = total / max(float(len(lg)), 1.0)
        assert torch.equal(losses["loss_fcos_cls"], expected * 0.5), (normalizer, len(pos))
        ctr_sum = extras["instances"].gt_ctrs.sum()
        assert torch.equal(extras["loss_denorm"], torch.clamp_min(ctr_sum, 1e-6))
    assert [len(b[0]) + len(b[1]) for b in batches] == [3, 0, 1]
    if normalizer == "moving_fg":
        assert outputs.moving_num_fg.dtype == torch.float64 and outputs.moving_num_fg.item() == moving


def test_iou_box_quality_is_normalised_by_the_number_of_positives():
    from condinst_percep.layers import IOULoss
    from condinst_percep.layers.losses import compute_ious

    torch.manual_seed(1)
    outputs = _outputs(box_quality="iou")
    locations = [compute_locations(4, 4, 8, torch.device("cpu"))]
    logits = [torch.randn(1, NUM_CLASSES, 4, 4)]
    reg = [torch.rand(1, 4, 4, 4) * 3]
    ctr = [torch.randn(1, 1, 4, 4)]
    extras, losses = outputs.losses(logits, reg, ctr, locations, [_gt([[0, 0, 20, 24]], [1])])
    inst = extras["instances"]
    assert len(inst) > 1
    ious, _ = compute_ious(inst.reg_pred, inst.reg_targets)
    expected_loc = IOULoss("giou")(inst.reg_pred, inst.reg_targets) / float(len(inst))
    expected_iou = torch.nn.functional.binary_cross_entropy_with_logits(
        inst.ctrness_pred, ious, reduction="sum"
    ) / float(len(inst))
    assert torch.equal(losses["loss_fcos_loc"], expected_loc)
    assert torch.equal(losses["loss_fcos_iou"], expected_iou)


def test_losses_without_positives_are_zero_and_connected():
    outputs = _outputs()
    logits = [torch.randn(1, NUM_CLASSES, 2, 2, requires_grad=True)]
    reg = [torch.rand(1, 4, 2, 2, requires_grad=True)]
    ctr = [torch.randn(1, 1, 2, 2, requires_grad=True)]
    locations = [compute_locations(2, 2, 8, torch.device("cpu"))]
    extras, losses = outputs.losses(logits, reg, ctr, locations, [_gt(torch.zeros(0, 4).tolist(), [])])
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_fcos_ctr"].item() == 0
    # all-background focal loss -(1 - alpha) p^2 log(1 - p), normalised by max(#pos, 1) = 1
    p = logits[0].detach().sigmoid()
    expected = (-(0.75) * p**2 * torch.log1p(-p)).sum()
    torch.testing.assert_close(losses["loss_fcos_cls"], expected)
    sum(losses.values()).backward()
    assert reg[0].grad is not None and ctr[0].grad is not None
    assert len(extras["instances"]) == 0


def test_inference_threshold_score_boxes_and_topk_ties():
    outputs = _outputs(thresh_with_ctr=True, pre_nms_thresh_test=0.05, post_nms_topk_test=2)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = torch.full((1, NUM_CLASSES, 1, 4), -20.0)
    ctr = torch.full((1, 1, 1, 4), logit(0.5))
    # location 0: class 1 with cls 0.5 -> 0.25 after ctr; class 2 with 0.08 -> 0.04 (< 0.05, dropped)
    logits[0, 1, 0, 0], logits[0, 2, 0, 0] = logit(0.5), logit(0.08)
    # locations 1-3: class 3 at 0.5/0.5/0.3; far-apart boxes, so NMS keeps all three
    logits[0, 3, 0, 1], logits[0, 3, 0, 2], logits[0, 3, 0, 3] = logit(0.5), logit(0.5), logit(0.3)
    reg = torch.ones(1, 4, 1, 4)  # 1 stride unit on each side
    locations = [torch.tensor([[4.0, 4.0], [100.0, 4.0], [200.0, 4.0], [300.0, 4.0]])]
    top = torch.arange(4.0).reshape(1, 1, 1, 4)
    det = outputs.predict_proposals([logits], [reg], [ctr], locations, [(8, 400)], [top])[0]
    # scores sqrt(cls * ctr): 0.5, 0.5, 0.5 and sqrt(0.15); top-2 keeps everything >= the
    # 2nd best, so all three ties at 0.5 survive
    torch.testing.assert_close(det.scores, torch.tensor([0.5, 0.5, 0.5]))
    assert det.pred_classes.tolist() == [1, 3, 3]
    assert det.top_feat[:, 0].tolist() == [0.0, 1.0, 2.0]
    torch.testing.assert_close(det.pred_boxes[0], torch.tensor([-4.0, -4.0, 12.0, 12.0]))
    assert det.fpn_levels.tolist() == [0, 0, 0]


def test_inference_nms_is_class_aware():
    outputs = _outputs(pre_nms_thresh_test=0.05)
    logits = torch.full((1, NUM_CLASSES, 1, 3), -20.0)
    logits[0, 0, 0, 0], logits[0, 0, 0, 1], logits[0, 1, 0, 2] = 3.0, 2.0, 1.0
    reg = torch.full((1, 4, 1, 3), 4.0)
    locations = [torch.tensor([[40.0, 40.0], [41.0, 40.0], [40.0, 41.0]])]
    det = outputs.predict_proposals([logits], [reg], [torch.zeros(1, 1, 1, 3)], locations, [(80, 80)])[0]
    assert det.pred_classes.tolist() == [0, 1]


def test_head_init_and_output_shapes():
    head = FCOSHead(in_channels=32, num_levels=2, num_classes=NUM_CLASSES)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((NUM_CLASSES,), -math.log(99)))
    assert head.cls_tower[0].weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert len(head.share_tower) == 0 and len(head.cls_tower) == 12
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    controller = torch.nn.Conv2d(32, 11, 3, padding=1)
    logits, reg, ctr, top = head(feats, controller)
    assert [tuple(x.shape) for x in logits] == [(2, NUM_CLASSES, 8, 8), (2, NUM_CLASSES, 4, 4)]
    assert all((r >= 0).all() for r in reg) and ctr[1].shape == (2, 1, 4, 4)
    assert [tuple(x.shape) for x in top] == [(2, 11, 8, 8), (2, 11, 4, 4)]
    torch.testing.assert_close(head.top_feats(feats, controller)[0], top[0])
    with pytest.raises(ValueError, match="MODEL.FCOS.NORM"):
        FCOSHead(in_channels=32, num_levels=2, norm="LN")
