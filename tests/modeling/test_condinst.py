import math

import pytest
import torch
import torch.nn.functional as F

from condinst_percep.config import get_cfg
from condinst_percep.layers import aligned_bilinear
from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst import (
    MASK_HEAD_REGISTRY,
    DynamicMaskHead,
    build_mask_head,
    inference as inference_module,
)
from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg
from tests.modeling.references import adelaidet_r50_state_dict

NUM_CLASSES = 3


# tiny_cfg's R-18 at detectron2's stem and res2 widths (64), AdelaiDet's 4-conv FCOS towers and
# mask branch (32 channels wide), 3 classes thresholded with centre-ness, 500 proposals at most.
SMALL = {
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.FCOS.NUM_CLASSES": NUM_CLASSES,
    "MODEL.FCOS.NUM_CLS_CONVS": 4,
    "MODEL.FCOS.NUM_BOX_CONVS": 4,
    "MODEL.FCOS.THRESH_WITH_CTR": True,
    "MODEL.CONDINST.MAX_PROPOSALS": 500,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS": 32,
    "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS": 4,
}


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg(**SMALL))


def _record(h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 10:40, 20:60] = True
    masks[1, 5:70, 5:30] = True
    boxes = torch.tensor([[20.0, 10.0, 60.0, 40.0], [5.0, 5.0, 30.0, 70.0]])
    inst = Instances((h, w), gt_boxes=boxes, gt_classes=torch.tensor([0, 2]), gt_masks=masks)
    return {"image": image, "height": h, "width": w, "instances": inst}


# ------------------------------------------------------------------------------ state_dict
def test_r50_state_dict_matches_adelaidet_key_for_key():
    cfg = get_cfg()  # AdelaiDet's R-50 CondInst
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    sd = model.state_dict()
    ref = adelaidet_r50_state_dict()
    assert [k for k, _ in ref] == list(sd)
    assert [s for _, s in ref] == [tuple(v.shape) for v in sd.values()]
    assert sum(p.numel() for p in model.parameters()) == 34_111_179
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 33_888_779
    assert sd["mask_head.sizes_of_interest"].tolist() == [64, 128, 256, 512, 1024]
    assert sd["mask_head.sizes_of_interest"].dtype == torch.int64
    assert sd["mask_head._iter"].dtype == torch.float32
    assert not any("pixel_mean" in k or "pixel_std" in k for k in sd)
    assert model.controller.weight.shape == (169, 256, 3, 3)


def test_r101_has_627_keys():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 101
    assert len(build_model(cfg).state_dict()) == 627


def test_build_model_rejects_other_meta_architectures():
    cfg = tiny_cfg(**SMALL)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(ValueError, match="META_ARCHITECTURE"):
        build_model(cfg)


# -------------------------------------------------------------------------------- training
def test_training_step_gives_four_finite_losses_and_all_gradients(small_model):
    model = small_model.train()
    model.zero_grad()
    losses = model([_record(100, 120, 0), _record(90, 130, 1)])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert all(v.dim() == 0 and math.isfinite(v.item()) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.mask_head._iter.item() >= 1


def test_training_under_bf16_autocast_on_cpu(small_model):
    model = small_model.train()
    batch = [_record(96, 96, 2)]
    with torch.no_grad():
        ref = model(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        losses = model(batch)
    for k, v in losses.items():
        assert v.dtype == torch.float32 and math.isfinite(v.item())
        assert v.item() == pytest.approx(ref[k].item(), rel=0.05, abs=0.02)


def test_image_without_instances_trains(small_model):
    model = small_model.train()
    empty = _record(64, 64)
    empty["instances"] = Instances(
        (64, 64), gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.int64),
        gt_masks=torch.zeros(0, 64, 64, dtype=torch.bool),
    )
    model.zero_grad()
    losses = model([empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_fcos_loc"].item() == 0
    sum(losses.values()).backward()
    assert model.controller.weight.grad is not None


def test_bad_inputs_name_the_field(small_model):
    model = small_model.train()
    rec = _record(64, 64)
    rec["instances"].gt_classes = torch.tensor([0, NUM_CLASSES])
    with pytest.raises(ValueError, match=r"batched_inputs\[0\].*gt_classes"):
        model([rec])
    rec = _record(64, 64)
    rec["instances"].gt_masks = torch.zeros(2, 32, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="gt_masks"):
        model([rec])
    rec = _record(64, 64)
    rec["instances"].gt_boxes = torch.tensor([[5.0, 5.0, 1.0, 9.0], [0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match="gt_boxes"):
        model([rec])
    with pytest.raises(ValueError, match="image"):
        model([{"image": torch.zeros(1, 8, 8, dtype=torch.uint8)}])


def test_preprocess_and_add_bitmasks(small_model):
    model = small_model
    recs = [_record(70, 100), _record(40, 33)]
    images, sizes = model.preprocess_image(recs)
    assert images.shape == (2, 3, 96, 128) and sizes == [(70, 100), (40, 33)]
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    torch.testing.assert_close(images[1, :, :40, :33], recs[1]["image"].float() - mean)
    assert images[1, :, 40:].abs().sum() == 0 and images[1, :, :, 33:].abs().sum() == 0
    gts = [r["instances"] for r in recs]
    model.add_bitmasks(gts, 96, 128)
    full = torch.zeros(2, 96, 128)
    full[:, :40, :33] = gts[1].gt_masks.float()
    assert torch.equal(gts[1].gt_bitmasks, full[:, 2::4, 2::4])
    assert gts[1].gt_bitmasks.shape == (2, 24, 32)
    # centre sampling uses the masks' centres of mass (x, y)
    expected = torch.stack([m.nonzero().double().mean(dim=0).flip(0) for m in gts[1].gt_masks])
    torch.testing.assert_close(gts[1].gt_centroids.double(), expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------- mask-head extension point
def test_mask_head_is_pluggable_through_the_registry():
    @MASK_HEAD_REGISTRY.register()
    class _ExtraLossHead(DynamicMaskHead):
        def losses(self, mask_logits, instances, gt_instances, images=None):
            losses = super().losses(mask_logits, instances, gt_instances, images)
            losses["loss_extra"] = mask_logits.float().sigmoid().mean() if len(instances) else mask_logits.sum() * 0
            return losses

    cfg = tiny_cfg(**SMALL)
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "_ExtraLossHead"
    assert type(build_mask_head(cfg)) is _ExtraLossHead
    model = build_model(cfg).train()
    losses = model([_record(64, 96)])
    assert "loss_extra" in losses and "loss_mask" in losses
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "Nope"
    with pytest.raises(ValueError, match="MASK_HEAD.NAME"):
        build_mask_head(cfg)


# -------------------------------------------------------------------------- sampling
def _fake_positives(n, gt_inds, im_inds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Instances(
        (0, 0), labels=torch.zeros(n, dtype=torch.int64), gt_inds=torch.tensor(gt_inds),
        im_inds=torch.tensor(im_inds), logits_pred=torch.randn(n, NUM_CLASSES, generator=gen),
        ctrness_pred=torch.randn(n, generator=gen), pos_inds=torch.arange(n),
    )


def test_max_proposals_samples_with_randperm(small_model):
    model = small_model
    inst = _fake_positives(700, [0] * 700, [0] * 700)
    torch.manual_seed(5)
    got = model.sample_instances(inst, [Instances((1, 1), gt_classes=torch.zeros(1))])
    torch.manual_seed(5)
    expected = torch.randperm(700)[:500]
    assert torch.equal(got.pos_inds, expected)
    assert len(model.sample_instances(inst[:400], [])) == 400


def test_topk_proposals_per_image_matches_adelaidet_loop():
    model = build_model(tiny_cfg(**{**SMALL, "MODEL.CONDINST.MAX_PROPOSALS": -1,
                                    "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 4}))
    # image 0 has GTs 0, 1, 2 (2 has no positive); image 1 has GT 3
    gt_inds = [0, 0, 0, 1, 1, 1, 1, 0, 3, 3, 3, 3, 3, 3]
    im_inds = [0] * 8 + [1] * 6
    inst = _fake_positives(len(gt_inds), gt_inds, im_inds)
    gts = [Instances((1, 1), gt_classes=torch.zeros(3)), Instances((1, 1), gt_classes=torch.zeros(1))]
    got = model.sample_instances(inst, gts)
    expected = []
    for im in range(2):
        per_im = inst[inst.im_inds == im]
        unique = per_im.gt_inds.unique()
        k = max(int(4 / len(unique)), 1)
        for g in unique:
            per_gt = per_im[per_im.gt_inds == g]
            if len(per_gt) > k:
                score = per_gt.logits_pred.sigmoid().max(dim=1)[0] * per_gt.ctrness_pred.sigmoid()
                per_gt = per_gt[score.topk(k)[1]]
            expected += per_gt.pos_inds.tolist()
    assert sorted(got.pos_inds.tolist()) == sorted(expected)
    assert len(got) == 2 + 2 + 4


# -------------------------------------------------------------------------- inference
def test_inference_masks_at_original_size_and_scaled_boxes(small_model, monkeypatch):
    model = small_model.eval()
    model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 0.0
    try:
        rec = _record(100, 120)
        with torch.no_grad():
            same = model([{"image": rec["image"]}])[0]["instances"]
            big = model([{"image": rec["image"], "height": 200, "width": 360}])[0]["instances"]
            monkeypatch.setattr(inference_module, "_POSTPROCESS_CHUNK_ELEMENTS", 1)
            chunked = model([{"image": rec["image"], "height": 200, "width": 360}])[0]["instances"]
    finally:
        model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 0.05
    assert same.image_size == (100, 120) and big.image_size == (200, 360)
    assert 0 < len(same) <= 100
    assert same.pred_masks.dtype == torch.bool and same.pred_masks.shape == (len(same), 100, 120)
    assert big.pred_masks.shape == (len(big), 200, 360)
    assert same.pred_classes.dtype == torch.int64 and same.scores.dtype == torch.float32
    assert torch.all(same.scores[:-1] >= same.scores[1:])
    # boxes: scaled by (3, 2) and clipped to the output size
    n = min(len(same), len(big))
    scaled = same.pred_boxes[:n] * torch.tensor([3.0, 2.0, 3.0, 2.0])
    clipped = torch.stack([scaled[:, 0].clamp(0, 360), scaled[:, 1].clamp(0, 200),
                           scaled[:, 2].clamp(0, 360), scaled[:, 3].clamp(0, 200)], 1)
    torch.testing.assert_close(big.pred_boxes[:n], clipped)
    assert torch.equal(chunked.pred_masks, big.pred_masks)


def test_postprocess_matches_unchunked_reference():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 24, 32, generator=gen)
    inst = Instances((96, 128), pred_boxes=torch.tensor([[1.0, 2.0, 50.0, 60.0], [5.0, 5.0, 5.0, 9.0],
                                                         [-10.0, 0.0, 300.0, 80.0]]),
                     scores=torch.tensor([0.9, 0.8, 0.7]), pred_classes=torch.tensor([0, 1, 2]),
                     pred_global_masks=probs)
    out = inference_module.postprocess(inst, (90, 100), 45, 50, (96, 128))
    # the empty box (zero width) is dropped; masks follow the kept boxes
    assert out.pred_classes.tolist() == [0, 2]
    ref = aligned_bilinear(probs[[0, 2]], 4)[:, :, :90, :100]
    ref = F.interpolate(ref, size=(45, 50), mode="bilinear", align_corners=False)[:, 0] > 0.5
    assert torch.equal(out.pred_masks, ref)
    torch.testing.assert_close(out.pred_boxes[1], torch.tensor([0.0, 0.0, 50.0, 40.0]))


def test_inference_with_no_detections(small_model):
    model = small_model.eval()
    model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 1.0
    try:
        with torch.no_grad():
            out = model([{"image": _record(64, 80)["image"], "height": 32, "width": 40},
                         {"image": _record(50, 50)["image"]}])
    finally:
        model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 0.05
    first = out[0]["instances"]
    assert len(first) == 0 and first.pred_masks.shape == (0, 32, 40) and first.pred_masks.dtype == torch.bool
    assert out[1]["instances"].pred_masks.shape == (0, 50, 50)


def test_teacher_path_reproduces_the_students_own_mask_logits():
    """A teacher with the student's weights must give the student's logits for its instances."""
    seen = {}

    @MASK_HEAD_REGISTRY.register()
    class _RecordingHead(DynamicMaskHead):
        def losses(self, mask_logits, instances, gt_instances, images=None):
            seen.update(logits=mask_logits.detach(), instances=instances, images=images)
            return super().losses(mask_logits, instances, gt_instances, images)

    cfg = tiny_cfg(**{**SMALL, "MODEL.CONDINST.MAX_PROPOSALS": 7})
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "_RecordingHead"
    student = build_model(cfg).train()
    for module in student.modules():  # BN on running stats, as in the teacher (eval mode)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    batch = [_record(100, 120, 0), _record(90, 130, 1)]
    with torch.no_grad():
        student(batch)
        teacher = build_model(tiny_cfg(**SMALL)).eval()
        teacher.load_state_dict(student.state_dict())
        logits = teacher.mask_logits_on(seen["images"], seen["instances"])
    assert len(seen["instances"]) == 7
    torch.testing.assert_close(logits, seen["logits"])


def test_inference_under_bf16_autocast(small_model):
    model = small_model.eval()
    model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 0.0
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model([{"image": _record(64, 80)["image"], "height": 128, "width": 100}])[0]["instances"]
    finally:
        model.proposal_generator.fcos_outputs.pre_nms_thresh_test = 0.05
    assert len(out) > 0 and out.pred_masks.shape == (len(out), 128, 100)
    assert out.pred_masks.dtype == torch.bool and out.scores.dtype == torch.float32
    assert out.pred_boxes.dtype == torch.float32 and torch.isfinite(out.pred_boxes).all()
