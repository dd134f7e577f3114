"""BoxInst and the deformable ResNet against AdelaiDet itself, and our deformable op against
torchvision's compiled CPU op (peer environment only; skipped where ``adet`` is not
importable). Bars: losses 1e-5, gradients 1e-4 relative, detections identical."""

from __future__ import annotations

import pytest
import torch

from condinst_percep.layers import deform_conv2d
from tests.layers.test_deform_conv import make_inputs

from .boxinst_dcn_helpers import compare_detections, compare_training_step, deform_conv_on_cpu

pytest.importorskip("adet", reason="AdelaiDet is not importable (peer environment only)")

SIZES = [(120, 150), (96, 136)]
# AdelaiDet's inference concatenates the images' proposals, which detectron2 allows only for
# images of one size.
DET_SIZES = [(120, 150), (120, 150)]
COMMON = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "MODEL.FCOS.POST_NMS_TOPK_TEST", 20,
]
BOXINST = [*COMMON, "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 4]
DCNI3 = [
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False,True,True,True]",
    "MODEL.RESNETS.DEFORM_MODULATED", True, "MODEL.RESNETS.DEFORM_INTERVAL", 3,
]


def test_boxinst_r50_1x_losses_gradients_detections():
    result = compare_training_step("BoxInst/MS_R_50_1x.yaml", BOXINST, SIZES)
    assert set(result["losses"]) >= {"loss_prj", "loss_pairwise"}
    assert result["losses"]["loss_pairwise"] > 0
    print("boxinst r50", {k: result[k] for k in ("loss", "grad")})
    assert result["loss"] < 1e-5, result
    assert result["grad"] < 1e-4, result
    assert compare_detections(*result["models"], DET_SIZES) > 0


@pytest.mark.parametrize(
    "config, opts",
    [
        ("BoxInst/MS_R_50_1x.yaml", BOXINST + DCNI3),
        (
            "CondInst/MS_R_50_1x.yaml",
            COMMON + ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False,False,True,True]"],
        ),
    ],
    ids=["boxinst_dcni3_v2", "condinst_dcn_v1"],
)
def test_deformable_resnet_losses_gradients_detections(config, opts):
    with deform_conv_on_cpu():
        result = compare_training_step(config, opts, SIZES)
        print(config, opts[-1], {k: result[k] for k in ("loss", "grad")})
        assert result["loss"] < 1e-5, result
        assert result["grad"] < 1e-4, result
        assert compare_detections(*result["models"], DET_SIZES) > 0


@pytest.mark.parametrize("modulated", [False, True])
def test_matches_torchvision_compiled_cpu_op(modulated):
    """torchvision's C++ CPU deform_conv2d (same offset/mask layout; the peer environment has
    a loadable build). Forward and all gradients, float32, random non-integer offsets."""
    ops = pytest.importorskip("torchvision.ops")
    case = (8, 6, 9, 11, 3, 2, 1, 1, 2, 2)
    x, offset, weight, bias, mask = (
        t.float() if t is not None else None for t in make_inputs(case, True, 3.0, seed=3)
    )
    if not modulated:
        mask, bias = None, None
    leaves = [t.requires_grad_() for t in (x, offset, weight, bias, mask) if t is not None]
    ours = deform_conv2d(x, offset, weight, bias, mask, 2, 1, 1, 2, 2)
    theirs = ops.deform_conv2d(x, offset, weight, bias, (2, 2), (1, 1), (1, 1), mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    probe = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad((ours * probe).sum(), leaves),
        torch.autograd.grad((theirs * probe).sum(), leaves),
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
