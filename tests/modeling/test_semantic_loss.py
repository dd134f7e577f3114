"""The auxiliary semantic loss of the '_sem' models against a pixel loop and the focal-loss formula
(AdelaiDet itself: tests/modeling/test_adelaidet_parity.py, peer environment)."""
import math

import pytest
import torch

from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst.semantic_loss import semantic_focal_loss, semantic_targets
from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg
from tests.percep_helpers import STUDENT, make_batch, tiny_percep_cfg

SEM = {"MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON": True}


def loop_targets(masks, classes, padded, stride):
    """Per sampled pixel of the padded canvas: 1 + the class of the smallest covering mask
    (the first such in GT order), 0 if none covers it or it lies in the padding."""
    h, w = masks.shape[1:]
    out = torch.zeros(padded[0] // stride, padded[1] // stride, dtype=torch.int64)
    areas = [int(m.sum()) for m in masks]
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            y, x = stride // 2 + i * stride, stride // 2 + j * stride
            best = None
            for g in range(len(masks)):
                if y < h and x < w and masks[g, y, x] and (best is None or areas[g] < areas[best]):
                    best = g
            if best is not None:
                out[i, j] = int(classes[best]) + 1
    return out


def test_targets_match_a_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    images = []
    for h, w, g in ((37, 50, 5), (48, 29, 3), (20, 20, 0)):
        masks = torch.zeros(g, h, w, dtype=torch.bool)
        for k in range(g):
            y0, dy = (int(v) for v in torch.randint(0, h - 5, (2,), generator=gen))
            x0, dx = (int(v) for v in torch.randint(0, w - 5, (2,), generator=gen))
            masks[k, y0 : y0 + dy + 3, x0 : x0 + dx + 3] = True
        if g:
            # Two masks of equal area overlapping: the first in GT order wins.
            masks[1] = False
            masks[1, 2:12, 3:13] = True
            masks[2] = False
            masks[2, 7:17, 8:18] = True
        classes = torch.randint(0, 4, (g,), generator=gen)
        images.append((masks, classes))
    padded, stride = (56, 56), 8
    got = semantic_targets([m for m, _ in images], [c for _, c in images], padded, stride)
    assert got.shape == (3, 7, 7) and got.dtype == torch.int64
    for n, (masks, classes) in enumerate(images):
        assert torch.equal(got[n], loop_targets(masks, classes, padded, stride))
    assert got[:2].count_nonzero() > 10 and got[2].count_nonzero() == 0


def test_tie_goes_to_the_first_gt_and_smaller_wins():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, :8, :] = True  # area 128, class 0
    masks[1, :, :8] = True  # area 128, class 1: ties with 0 on the top-left quarter
    masks[2, 5:7, 5:7] = True  # area 4, class 2: inside both
    got = semantic_targets([masks], [torch.tensor([0, 1, 2])], (16, 16), 4)[0]
    # Sampled pixels at 2, 6, 10, 14 per axis.
    expected = torch.tensor([[1, 1, 1, 1], [1, 3, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    assert torch.equal(got, expected)


def focal_formula(x: float, t: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-x))
    p_t = p if t else 1 - p
    alpha_t = alpha if t else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0)])
def test_focal_loss_closed_form(alpha, gamma):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, 4, (2, 4, 5), generator=gen)
    total = 0.0
    for n, c, i, j in torch.cartesian_prod(*(torch.arange(s) for s in logits.shape)).tolist():
        total += focal_formula(float(logits[n, c, i, j]), int(targets[n, i, j]) == c + 1, alpha, gamma)
    num_pos = int((targets > 0).sum())
    got = semantic_focal_loss(logits.float(), targets, alpha, gamma)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(total / num_pos, rel=1e-5)
    # No positive pixel: the sum is divided by 1, not by 0.
    background = torch.zeros_like(targets)
    expected = sum(focal_formula(float(x), False, alpha, gamma) for x in logits.flatten())
    assert float(semantic_focal_loss(logits.float(), background, alpha, gamma)) == pytest.approx(expected, rel=1e-5)


def test_head_layout_and_prior():
    model = build_model(tiny_cfg(**STUDENT, **SEM))
    keys = [k for k in model.state_dict() if k.startswith(("mask_branch.seg_head.", "mask_branch.logits."))]
    assert len(keys) == 14  # 2 x (conv weight + 5 BN entries) + logits weight and bias
    assert model.mask_branch.seg_head[0][0].weight.shape == (32, 32, 3, 3)
    assert model.mask_branch.logits.weight.shape == (3, 32, 1, 1)
    assert torch.allclose(model.mask_branch.logits.bias, torch.full((3,), -math.log(99)))
    assert not any(k.startswith("mask_branch.seg_head") for k in build_model(tiny_cfg(**STUDENT)).state_dict())


def _twins(cfg_on, cfg_off):
    """The same weights with and without the semantic head."""
    torch.manual_seed(0)
    on = build_model(cfg_on)
    off = build_model(cfg_off)
    missing, unexpected = off.load_state_dict(on.state_dict(), strict=False)
    assert missing == [] and len(unexpected) == 14
    return on, off


def _losses(model, batch):
    torch.manual_seed(5)  # the same MAX_PROPOSALS draw and loss-network init for both
    model.train()
    return model(batch)


def test_loss_sem_trains_only_its_head_and_leaves_the_rest_unchanged():
    on, off = _twins(tiny_cfg(**STUDENT, **SEM), tiny_cfg(**STUDENT))
    batch = make_batch()
    with_sem, without = _losses(on, batch), _losses(off, batch)
    assert list(with_sem) == ["loss_sem", *without]
    for key in without:
        assert torch.equal(with_sem[key], without[key]), key
    # loss_sem on this batch, recomputed from its definition.
    p3 = on.backbone(on.preprocess_image(batch)[0])["p3"]
    logits = on.mask_branch.logits(on.mask_branch.seg_head(p3))
    masks = [x["instances"].gt_masks for x in batch]
    classes = [x["instances"].gt_classes for x in batch]
    targets = semantic_targets(masks, classes, (p3.shape[-2] * 8, p3.shape[-1] * 8), 8)
    assert targets.count_nonzero() > 0
    assert torch.allclose(with_sem["loss_sem"], semantic_focal_loss(logits, targets, 0.25, 2.0))

    with_sem["loss_sem"].backward()
    head = dict(on.mask_branch.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in head.items() if n.startswith(("seg_head", "logits")))
    # The semantic head reads P3: the backbone learns from it, the other heads do not.
    assert on.backbone.fpn_output3.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in on.proposal_generator.parameters())
    assert all(p.grad is None for n, p in head.items() if n.startswith(("refine", "tower")))


def test_semantic_head_is_unused_at_inference():
    on, off = _twins(tiny_cfg(**STUDENT, **SEM), tiny_cfg(**STUDENT))
    batch = make_batch(with_instances=False)
    on.eval()
    off.eval()
    with torch.no_grad():
        a, b = on(batch), off(batch)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) > 0
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            assert torch.equal(x.get(field), y.get(field))


def test_image_without_instances_is_all_background():
    model = build_model(tiny_cfg(**STUDENT, **SEM))
    batch = make_batch()
    h, w = batch[1]["image"].shape[-2:]
    batch[1]["instances"] = Instances(
        (h, w), gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.int64),
        gt_masks=torch.zeros(0, h, w, dtype=torch.bool),
    )
    losses = _losses(model, batch)
    assert torch.isfinite(losses["loss_sem"])


def test_perceptual_loss_composes_with_the_semantic_head():
    on, off = _twins(tiny_percep_cfg("gt", **SEM), tiny_percep_cfg("gt"))
    batch = make_batch()
    with_sem, without = _losses(on, batch), _losses(off, batch)
    assert set(with_sem) == {"loss_sem", "loss_percep", *without}
    assert torch.isfinite(with_sem["loss_percep"]) and with_sem["loss_percep"] > 0
    assert torch.equal(with_sem["loss_percep"], without["loss_percep"])
    sum(with_sem.values()).backward()
    assert on.mask_branch.logits.weight.grad.abs().sum() > 0
