"""BoxInst and the deformable ResNet against AdelaiDet itself (peer environment only; skipped
where ``adet`` is not importable). Bars: losses 1e-5, gradients 1e-4 relative, detections
identical."""

from __future__ import annotations

import pytest

from .adelaidet_parity import compare_detections, compare_training_step, deform_conv_on_cpu

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
