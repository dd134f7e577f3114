import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from condinst_percep.config import get_cfg
from condinst_percep.layers import Conv2d, FrozenBatchNorm2d
from condinst_percep.modeling.backbone import (
    BasicBlock,
    BottleneckBlock,
    build_backbone,
    build_fcos_resnet_fpn_backbone,
)
from tests.conftest import SMALL_BACKBONE, randomise_norms, tiny_cfg
from tests.modeling.references import adelaidet_r50_state_dict

# --- against AdelaiDet's state_dict -------------------------------------------------


def test_r50_backbone_matches_adelaidet_state_dict():
    backbone = build_backbone(get_cfg())
    sd = backbone.state_dict()
    reference = [(k[len("backbone.") :], shape) for k, shape in adelaidet_r50_state_dict()
                 if k.startswith("backbone.")]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == reference
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert sum(p.numel() for p in backbone.parameters()) == 27_323_584
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 27_101_184
    assert sum(b.numel() for b in backbone.buffers()) == 106_240
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert {s.channels for s in shapes.values()} == {256}


def test_r101_backbone_key_count_matches_627_key_model():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    keys = list(build_backbone(cfg).state_dict())
    # 627 keys in AdelaiDet's R-101 model, 372 - 281 = 91 of them outside the backbone.
    assert len(keys) == 627 - 91
    assert "bottom_up.res4.22.conv3.norm.running_var" in keys
    assert not any(k.startswith("bottom_up.res4.23.") for k in keys)


# --- blocks against hand-written convolutions ----------------------------------------------------


def frozen_bn(x, norm):
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_bottleneck_block_against_plain_convs(stride_in_1x1):
    block = BottleneckBlock(
        8, 16, bottleneck_channels=4, stride=2, norm="FrozenBN", stride_in_1x1=stride_in_1x1
    )
    randomise_norms(block)
    x = torch.randn(2, 8, 9, 11)
    s1, s3 = (2, 1) if stride_in_1x1 else (1, 2)
    c1, c2, c3, sc = block.conv1, block.conv2, block.conv3, block.shortcut
    out = F.relu(frozen_bn(F.conv2d(x, c1.weight, stride=s1), c1.norm))
    out = F.relu(frozen_bn(F.conv2d(out, c2.weight, stride=s3, padding=1), c2.norm))
    out = frozen_bn(F.conv2d(out, c3.weight), c3.norm)
    expected = F.relu(out + frozen_bn(F.conv2d(x, sc.weight, stride=2), sc.norm))
    torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 16, 5, 6)


def test_basic_block_identity_shortcut_against_plain_convs():
    block = BasicBlock(8, 8, stride=1, norm="FrozenBN")
    randomise_norms(block)
    assert block.shortcut is None
    x = torch.randn(1, 8, 7, 5)
    out = F.relu(frozen_bn(F.conv2d(x, block.conv1.weight, padding=1), block.conv1.norm))
    expected = F.relu(frozen_bn(F.conv2d(out, block.conv2.weight, padding=1), block.conv2.norm) + x)
    torch.testing.assert_close(block(x), expected)


def test_stride_in_1x1_places_stride():
    for flag, conv1_stride, conv2_stride in [(True, 2, 1), (False, 1, 2)]:
        cfg = tiny_cfg(**SMALL_BACKBONE[50], **{"MODEL.RESNETS.STRIDE_IN_1X1": flag})
        res3 = build_backbone(cfg).bottom_up.res3[0]
        assert (res3.conv1.stride[0], res3.conv2.stride[0]) == (conv1_stride, conv2_stride)


# --- FPN against an independent top-down computation ---------------------------------------------


def test_fpn_forward_against_reference():
    cfg = tiny_cfg(**SMALL_BACKBONE[18], **{"MODEL.RESNETS.NORM": "BN"})
    backbone = build_backbone(cfg).eval()
    randomise_norms(backbone)
    x = torch.randn(2, 3, 64, 96)
    out = backbone(x)
    c = backbone.bottom_up(x)
    conv = lambda m, t, **kw: F.conv2d(t, m.weight, m.bias, **kw)  # noqa: E731
    lat5 = conv(backbone.fpn_lateral5, c["res5"])
    up2 = lambda t: t.repeat_interleave(2, 2).repeat_interleave(2, 3)  # noqa: E731
    lat4 = conv(backbone.fpn_lateral4, c["res4"]) + up2(lat5)
    lat3 = conv(backbone.fpn_lateral3, c["res3"]) + up2(lat4)
    p5 = conv(backbone.fpn_output5, lat5, padding=1)
    p6 = conv(backbone.top_block.p6, p5, stride=2, padding=1)
    expected = {
        "p3": conv(backbone.fpn_output3, lat3, padding=1),
        "p4": conv(backbone.fpn_output4, lat4, padding=1),
        "p5": p5,
        "p6": p6,
        "p7": conv(backbone.top_block.p7, F.relu(p6), stride=2, padding=1),
    }
    assert list(out) == list(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], msg=k)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


@pytest.mark.parametrize(
    "top_levels, names",
    [(2, ["p3", "p4", "p5", "p6", "p7"]), (1, ["p3", "p4", "p5", "p6"]), (0, ["p3", "p4", "p5"])],
)
def test_top_levels(top_levels, names):
    cfg = tiny_cfg(**SMALL_BACKBONE[18])
    cfg.MODEL.FCOS.TOP_LEVELS = top_levels
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == names
    assert list(backbone(torch.zeros(1, 3, 64, 64))) == names
    assert hasattr(backbone, "top_block") and (backbone.top_block is None) == (top_levels == 0)


def test_tiny_r18_and_r34_from_scratch_channels():
    for depth in (18, 34):
        backbone = build_fcos_resnet_fpn_backbone(tiny_cfg(**SMALL_BACKBONE[depth]))
        res = backbone.bottom_up.output_shape()
        assert [res[f].channels for f in ("res3", "res4", "res5")] == [16, 32, 64]
        assert backbone.fpn_lateral5.weight.shape == (16, 64, 1, 1)


def test_input_errors():
    backbone = build_backbone(tiny_cfg(**SMALL_BACKBONE[18]))
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.zeros(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        backbone(torch.zeros(1, 1, 64, 64))
    cfg = tiny_cfg(**SMALL_BACKBONE[18])
    cfg.MODEL.BACKBONE.NAME = "build_vovnet_fpn_backbone"
    with pytest.raises(ValueError, match="build_vovnet_fpn_backbone.*build_fcos_resnet_bifpn"):
        build_backbone(cfg)


# --- freezing and initialisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "freeze_at, frozen",
    [(0, []), (1, ["stem"]), (2, ["stem", "res2"]), (5, ["stem", "res2", "res3", "res4", "res5"])],
)
def test_freeze_at(freeze_at, frozen):
    cfg = tiny_cfg(**SMALL_BACKBONE[18], **{"MODEL.RESNETS.NORM": "BN"})
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    bottom_up = build_backbone(cfg).bottom_up
    for name in ["stem", "res2", "res3", "res4", "res5"]:
        module = getattr(bottom_up, name)
        grads = {p.requires_grad for p in module.parameters()}
        assert grads == {name not in frozen}, name
        norms = (nn.BatchNorm2d, FrozenBatchNorm2d)
        bn_types = {type(m) for m in module.modules() if isinstance(m, norms)}
        assert bn_types == {FrozenBatchNorm2d if name in frozen else nn.BatchNorm2d}, name


def test_initialisation_follows_detectron2():
    backbone = build_backbone(get_cfg())
    w = backbone.bottom_up.res5[0].conv2.weight  # (512, 512, 3, 3): fan_out = 512 * 9
    assert abs(w.std().item() - math.sqrt(2 / (512 * 9))) < 0.02 * math.sqrt(2 / (512 * 9))
    for m in (backbone.fpn_output3, backbone.top_block.p7):
        bound = math.sqrt(3 / (256 * 9))
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.95 * bound
        assert torch.all(m.bias == 0)


# --- normalisation ------------------------------------------------------------------------------


def test_group_norm_resnet():
    cfg = tiny_cfg(**SMALL_BACKBONE[18], **{"MODEL.RESNETS.NORM": "GN", "MODEL.RESNETS.STEM_OUT_CHANNELS": 32,
                                         "MODEL.RESNETS.RES2_OUT_CHANNELS": 32})
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_backbone(cfg)
    norms = [m.norm for m in backbone.bottom_up.modules() if isinstance(m, Conv2d)]
    assert norms and all(isinstance(n, nn.GroupNorm) and n.num_groups == 32 for n in norms)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert out["p3"].shape == (2, 16, 8, 8)
    out["p7"].sum().backward()
    assert backbone.bottom_up.stem.conv1.norm.weight.grad is not None
