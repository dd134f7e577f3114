"""The '_sem' and BiFPN CondInst models against the real AdelaiDet (peer environment only).

Run with the peer python (tools/peer_env.sh): ``PYTHONPATH=$PWD $PEER_PY -m pytest -q
tests/modeling/test_adelaidet_parity.py``. Elsewhere the module is skipped at collection.

Same state dict (ours, randomly initialised, FrozenBN statistics randomised, loaded strictly into
AdelaiDet's), same batch -> losses within 1e-5 relative, gradients within 1e-4 (norm of the
difference over the norm, per parameter and over all), identical detections.
"""
import os

import pytest
import torch

adet = pytest.importorskip("adet", reason="AdelaiDet is importable only in the peer environment")

from adet.config import get_cfg as adet_get_cfg  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402

from condinst_percep.checkpoint import Checkpointer  # noqa: E402
from condinst_percep.config import get_cfg  # noqa: E402
from condinst_percep.modeling import build_model  # noqa: E402
from condinst_percep.structures import Instances  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADET_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs", "CondInst")
# Every score kept, so that the detections compared are many and not only the confident few.
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0"]
CONFIGS = ["MS_R_50_3x_sem", "MS_R_50_BiFPN_1x", "MS_R_50_BiFPN_3x_sem"]


def build_pair(name):
    """(ours, AdelaiDet's) for configs/CondInst/<name>.yaml, with the same weights."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "CondInst", f"{name}.yaml"))
    cfg.merge_from_list(OPTS)
    ref_cfg = adet_get_cfg()
    ref_cfg.merge_from_file(os.path.join(ADET_CONFIGS, f"{name}.yaml"))
    ref_cfg.merge_from_list(OPTS)
    torch.manual_seed(0)
    ours = build_model(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, value in ours.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean"):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    ref = d2_build_model(ref_cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def batches():
    """Two images of different sizes with three objects each (nested and overlapping masks,
    two of the same class), in our format and in detectron2's."""
    ours, ref = [], []
    for i, (h, w) in enumerate(((120, 150), (100, 170))):
        gen = torch.Generator().manual_seed(10 + i)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        masks = torch.zeros(3, h, w, dtype=torch.bool)
        masks[0, 10:60, 20:90] = True
        masks[1, 30:95, 5:50] = True
        masks[1, 30:40, 5:15] = False
        masks[2, 40:70, 60:140] = True
        image[:, masks[0]] = 220
        boxes = torch.tensor([[20.0, 10.0, 90.0, 60.0], [5.0, 30.0, 50.0, 95.0], [60.0, 40.0, 140.0, 70.0]])
        classes = torch.tensor([3, 0, 3])
        ours.append({
            "image": image, "height": h, "width": w,
            "instances": Instances((h, w), gt_boxes=boxes, gt_classes=classes, gt_masks=masks),
        })
        inst = D2Instances((h, w))
        inst.gt_boxes = Boxes(boxes.clone())
        inst.gt_classes = classes.clone()
        inst.gt_masks = BitMasks(masks.clone())
        ref.append({"image": image.clone(), "height": h, "width": w, "instances": inst})
    return ours, ref


def gradient_differences(ours, ref) -> tuple[float, float]:
    """(max over parameters, over all parameters) of |g_ours - g_ref| / |g_ref|. Parameters whose
    reference gradient is below 1e-6 of the whole gradient's norm (biases of convs followed by a
    training batch norm, zero but for rounding) are compared in absolute terms instead."""
    ours_params = dict(ours.named_parameters())
    pairs = [(ours_params[n].grad, p.grad, n) for n, p in ref.named_parameters() if p.requires_grad]
    assert all((a is None) == (b is None) for a, b, _ in pairs)
    pairs = [(a, b, n) for a, b, n in pairs if b is not None]
    total = torch.cat([b.flatten() for _, b, _ in pairs]).norm()
    worst = 0.0
    for a, b, name in pairs:
        diff = (a - b).norm()
        if b.norm() < 1e-6 * total:
            assert diff < 1e-6 * total, name
        else:
            worst = max(worst, float(diff / b.norm()))
    everything = torch.cat([(a - b).flatten() for a, b, _ in pairs]).norm() / total
    return worst, float(everything)


@pytest.mark.parametrize("name", CONFIGS)
def test_losses_gradients_and_detections_equal_adelaidet(name):
    ours, ref = build_pair(name)
    ours_batch, ref_batch = batches()
    ours.train()
    ref.train()
    ours_losses, ref_losses = ours(ours_batch), ref(ref_batch)
    assert list(ours_losses) == list(ref_losses)
    assert ("loss_sem" in ours_losses) == name.endswith("_sem")
    for key, value in ref_losses.items():
        a, b = float(ours_losses[key].detach()), float(value.detach())
        assert torch.isfinite(value) and abs(a - b) <= 1e-5 * abs(b), key
    sum(ours_losses.values()).backward()
    sum(ref_losses.values()).backward()
    per_parameter, overall = gradient_differences(ours, ref)
    assert per_parameter <= 1e-4 and overall <= 1e-4

    ours.eval()
    ref.eval()
    # AdelaiDet's inference cannot batch images of different sizes (Instances.cat asserts on
    # image_size), so each image goes alone.
    with torch.no_grad():
        for x, y in zip(ours_batch, ref_batch):
            a = ours([{k: v for k, v in x.items() if k != "instances"}])[0]["instances"]
            b = ref([{k: v for k, v in y.items() if k != "instances"}])[0]["instances"]
            assert len(a) == len(b) > 0
            assert torch.equal(a.pred_classes, b.pred_classes)
            assert torch.equal(a.pred_boxes, b.pred_boxes.tensor)
            assert torch.equal(a.scores, b.scores)
            assert torch.equal(a.pred_masks, b.pred_masks)


def test_adelaidet_sem_checkpoint_loads_with_nothing_skipped(tmp_path):
    ours, ref = build_pair("MS_R_50_3x_sem")
    with torch.no_grad():
        for value in ref.state_dict().values():
            if value.is_floating_point():
                value.add_(0.01)
    path = tmp_path / "CondInst_MS_R_50_3x_sem.pth"
    torch.save({"model": ref.state_dict(), "iteration": 269999}, path)
    checkpointer = Checkpointer(ours)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert report.skipped == {} and report.missing == [] and report.unexpected == []
    assert report.mismatched == {}
    assert len(report.loaded) == len(ref.state_dict())
    theirs = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
