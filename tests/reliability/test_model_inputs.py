"""Inputs at the edges of what the model sees: an image smaller than the largest
stride, a batch of very different sizes (training and inference), masks pasted at a large
original size in bounded chunks, and the GroupNorm configuration that cannot work."""

import pytest
import torch

import condinst_percep.modeling.condinst.inference as inference_module
from condinst_percep.config import UnsupportedConfigError
from condinst_percep.engine import validate_cfg
from condinst_percep.modeling import build_model
from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg


# tiny_cfg (whose 64-channel FPN has two channels per GN group: see the last test) with a frozen-BN
# backbone trained from its stem, 2 classes, and every detection of an untrained model kept.
OVERRIDES = {
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.FCOS.NUM_CLASSES": 2,
    "MODEL.FCOS.INFERENCE_TH_TEST": 0.0,
}


def _sample(h, w, seed, with_instances=True):
    g = torch.Generator().manual_seed(seed)
    d = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
    if with_instances:
        masks = torch.zeros(1, h, w, dtype=torch.bool)
        masks[0, h // 4 : h // 4 + max(1, h // 2), w // 4 : w // 4 + max(1, w // 2)] = True
        ys, xs = masks[0].nonzero(as_tuple=True)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        d["instances"] = Instances((h, w), gt_boxes=box, gt_classes=torch.tensor([1]), gt_masks=masks)
    return d


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg(**OVERRIDES))


@pytest.mark.parametrize("sizes", [[(20, 20)], [(64, 400), (300, 48)], [(20, 20), (64, 400), (300, 48)]],
                         ids=["20x20", "64x400+300x48", "all"])
def test_small_and_very_different_sizes_train_and_infer(model, sizes):
    model.train()
    if sizes == [(20, 20)]:
        # Training BN (the mask branch's, AdelaiDet's default) cannot normalise the 1x1 P5 of
        # a lone 20x20 image; with other images in the batch it can (the other cases).
        with pytest.raises(ValueError, match=r"^mask_branch\.refine\.2\.1: its batch norm \(chosen by "
                           r"MODEL.CONDINST.MASK_BRANCH.NORM\).*\(1, 16, 1, 1\)"):
            model([_sample(20, 20, 0)])
        sizes = [(20, 20), (20, 20)]
    losses = model([_sample(h, w, i) for i, (h, w) in enumerate(sizes)])
    assert set(losses) >= {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert all(bool(torch.isfinite(v)) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model([_sample(h, w, i, with_instances=False) for i, (h, w) in enumerate(sizes)])
    for (h, w), out in zip(sizes, outputs):
        inst = out["instances"]
        assert inst.image_size == (h, w) and len(inst) > 0
        assert inst.pred_masks.shape == (len(inst), h, w) and inst.pred_masks.dtype == torch.bool
        boxes = inst.pred_boxes
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())


@pytest.mark.parametrize("key, layer", [
    ("MODEL.RESNETS.NORM", "backbone.bottom_up.res5.0.conv1.norm"),
    ("MODEL.FPN.NORM", "backbone.fpn_lateral5.norm"),
])
def test_batch_norm_without_statistics_names_the_layer_and_its_key(key, layer):
    # Training BN anywhere fails the same way on a lone 32x32 image (1x1 at stride 32); the
    # error names the first such layer and the key that chose it, not torch's internals.
    cfg = tiny_cfg(**OVERRIDES)
    cfg.MODEL.CONDINST.MASK_BRANCH.NORM = ""
    cfg.merge_from_list([key, "BN"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with pytest.raises(ValueError, match=rf"^{layer}: its batch norm \(chosen by {key}\)"):
        model([_sample(32, 32, 0)])
    assert all(bool(torch.isfinite(v)) for v in model([_sample(32, 32, 0), _sample(32, 32, 1)]).values())
    model.eval()
    with torch.no_grad():  # running statistics: a lone image is fine
        assert model([_sample(32, 32, 0, with_instances=False)])[0]["instances"].image_size == (32, 32)


def test_masks_at_a_large_original_size_are_pasted_in_bounded_chunks(model, monkeypatch):
    # A 96x128 input whose original image is 1200x1600: each float mask at that size takes
    # 7.7 MB (100 of them 768 MB); the paste must go in chunks of at most 2**25 elements.
    calls = []
    real = inference_module.aligned_bilinear

    def recording(x, factor):
        calls.append(x.shape[0])
        return real(x, factor)

    monkeypatch.setattr(inference_module, "aligned_bilinear", recording)
    sample = _sample(96, 128, 0, with_instances=False)
    sample["height"], sample["width"] = 1200, 1600
    model.eval()
    with torch.no_grad():
        inst = model([sample])[0]["instances"]
    assert len(inst) >= 20 and inst.pred_masks.shape == (len(inst), 1200, 1600)
    padded = 128 * 128  # the input padded to the size divisibility
    per_mask = max(padded, 1200 * 1600)
    assert sum(calls) == len(inst) and len(calls) > 1
    assert max(calls) * per_mask <= inference_module._POSTPROCESS_CHUNK_ELEMENTS


def test_one_channel_per_gn_group_with_a_1x1_top_level_is_refused():
    # Reproduces the report "FPN.OUT_CHANNELS 32 and a 1x1 P7 raise 'Expected more than 1
    # value per channel' at batch 1": with 32 GN groups on 32 channels each group holds one
    # value on a 1x1 map. The config is refused before anything is built.
    cfg = tiny_cfg(**OVERRIDES)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (48,), 48
    with pytest.raises(UnsupportedConfigError, match=r"MODEL.FPN.OUT_CHANNELS = 32: with MODEL.FCOS.NORM "
                       r"'GN' \(32 groups\) leaves one channel per group.*1x1 map at stride 128"):
        build_model(cfg)
    # What torch does with that model on a 1x1 P7 at batch 1 (built without the check):
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (160,), 160
    validate_cfg(cfg)  # images of at least 160 px never give a 1x1 map at stride 128
    small = build_model(cfg).eval()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        with torch.no_grad():
            small([_sample(100, 100, 0, with_instances=False)])
