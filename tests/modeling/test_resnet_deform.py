"""Deformable ResNets: which blocks deform (detectron2's rule, AdelaiDet's DEFORM_INTERVAL),
their keys and shapes, and the zero-initialised offsets that start them as the plain block."""

from __future__ import annotations

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.layers import ShapeSpec
from condinst_percep.modeling.backbone import BottleneckBlock
from condinst_percep.config.validate import UnsupportedConfigError, collect_problems
from condinst_percep.modeling.backbone.resnet import (
    DeformBottleneckBlock,
    build_resnet_backbone,
    check_resnet_cfg,
)


def deform_cfg(depth=101, stages=(False, True, True, True), modulated=True, interval=3, groups=1):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.DEFORM_ON_PER_STAGE = list(stages)
    r.DEFORM_MODULATED = modulated
    r.DEFORM_INTERVAL = interval
    r.DEFORM_NUM_GROUPS = groups
    # Narrow widths: the structure, not the size, is under test.
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = 8, 16
    r.WIDTH_PER_GROUP = 4 if depth >= 50 else 64
    return cfg


def deformed_blocks(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, DeformBottleneckBlock)]


def test_dcni3_r101_deforms_every_third_block_of_res3_to_res5():
    """MS_R_101_BiFPN_dcni3_3x: blocks 0, 3, 6, ... of res3, res4, res5 (AdelaiDet's
    ``make_stage_intervals``: ``i % deform_interval == 0``)."""
    model = build_resnet_backbone(deform_cfg(), ShapeSpec(channels=3))
    expected = (
        ["res3.0", "res3.3"] + [f"res4.{i}" for i in range(0, 23, 3)] + ["res5.0"]
    )
    assert deformed_blocks(model) == expected
    keys = [k for k in model.state_dict() if k.startswith("res3.0.")]
    assert keys[:12] == [
        "res3.0.shortcut.weight", "res3.0.shortcut.norm.weight", "res3.0.shortcut.norm.bias",
        "res3.0.shortcut.norm.running_mean", "res3.0.shortcut.norm.running_var",
        "res3.0.conv1.weight", "res3.0.conv1.norm.weight", "res3.0.conv1.norm.bias",
        "res3.0.conv1.norm.running_mean", "res3.0.conv1.norm.running_var",
        "res3.0.conv2_offset.weight", "res3.0.conv2_offset.bias",
    ]
    sd = model.state_dict()
    assert sd["res3.0.conv2_offset.weight"].shape == (27, 8, 3, 3)
    assert sd["res3.0.conv2.weight"].shape == (8, 8, 3, 3)
    assert "res3.0.conv2.bias" not in sd
    assert sd["res5.0.conv2_offset.weight"].shape == (27, 32, 3, 3)


@pytest.mark.parametrize("interval", [1, 2])
def test_interval_one_deforms_all_blocks_of_a_stage(interval):
    stages = (False, False, True, False)
    cfg = deform_cfg(depth=50, stages=stages, modulated=False, interval=interval)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert deformed_blocks(model) == [f"res4.{i}" for i in range(0, 6, interval)]
    assert model.state_dict()["res4.0.conv2_offset.weight"].shape == (18, 16, 3, 3)


def test_deform_groups_multiply_offset_channels():
    cfg = deform_cfg(depth=50, stages=(True, False, False, False), interval=1, groups=2)
    sd = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    assert sd["res2.0.conv2_offset.weight"].shape == (54, 4, 3, 3)


def test_frozen_stages_freeze_the_offsets_too():
    cfg = deform_cfg(depth=50, stages=(True, True, False, False), interval=1)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert not model.res2[0].conv2_offset.weight.requires_grad
    assert model.res3[0].conv2_offset.weight.requires_grad


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_zero_offsets_start_as_the_plain_block(modulated, stride):
    """conv2_offset is zero at init: DCNv1 is the plain 3x3 conv; DCNv2 has mask sigmoid(0) =
    1/2 on every sample, i.e. the plain conv with half the weight. Then trained offsets move it."""
    torch.manual_seed(0)
    kw = dict(bottleneck_channels=8, stride=stride, norm="FrozenBN")
    deform = DeformBottleneckBlock(16, 32, deform_modulated=modulated, **kw)
    plain = BottleneckBlock(16, 32, **kw)
    state = {k: v for k, v in deform.state_dict().items() if "conv2_offset" not in k}
    if modulated:
        state["conv2.weight"] = state["conv2.weight"] / 2
    plain.load_state_dict(state)
    x = torch.randn(2, 16, 9, 10)
    torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        deform.conv2_offset.bias.fill_(0.7)
    assert (deform(x) - plain(x)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            dict(depth=18, stages=(False, True, False, False)),
            "DEFORM_ON_PER_STAGE = .*ResNet-18 has no bottleneck",
        ),
        (dict(depth=50, interval=0), "DEFORM_INTERVAL = 0: must be >= 1"),
        (dict(depth=50, groups=3), "DEFORM_NUM_GROUPS = 3: must be >= 1 and divide"),
        (dict(depth=50, stages=(True, True)), r"DEFORM_ON_PER_STAGE = \[True, True\]: needs 4"),
    ],
)
def test_refused_deform_settings_name_the_key(overrides, match):
    with pytest.raises(UnsupportedConfigError, match=match) as err:
        collect_problems(deform_cfg(**overrides), [check_resnet_cfg])
    assert len(err.value.problems) == 1
