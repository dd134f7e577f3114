"""The BiFPN backbone against an explicit formula, AdelaiDet's node tables and config errors
(AdelaiDet itself: tests/modeling/test_adelaidet_parity.py, peer environment)."""
import pytest
import torch
import torch.nn.functional as F

from condinst_percep.config import UnsupportedConfigError, get_cfg
from condinst_percep.config.validate import collect_problems
from condinst_percep.engine import validate_cfg
from condinst_percep.modeling import build_model
from condinst_percep.modeling.backbone import (
    BACKBONE_REGISTRY,
    BiFPNLayer,
    build_backbone,
    check_backbone_cfg,
)
from condinst_percep.modeling.backbone.bifpn import bifpn_nodes
from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg
from tests.percep_helpers import STUDENT

# AdelaiDet's SingleBiFPN node tables (adet/modeling/backbone/bifpn.py), as (level, inputs).
ADELAIDET_NODES = {
    3: [(1, (1, 2)), (0, (0, 3)), (1, (1, 3, 4)), (2, (2, 5))],
    5: [
        (3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)),
        (1, (1, 7, 8)), (2, (2, 6, 9)), (3, (3, 5, 10)), (4, (4, 11)),
    ],
    6: [
        (4, (4, 5)), (3, (3, 6)), (2, (2, 7)), (1, (1, 8)), (0, (0, 9)),
        (1, (1, 9, 10)), (2, (2, 8, 11)), (3, (3, 7, 12)), (4, (4, 6, 13)), (5, (5, 14)),
    ],
}


@pytest.mark.parametrize("levels", sorted(ADELAIDET_NODES))
def test_nodes_are_adelaidets(levels):
    assert bifpn_nodes(levels) == ADELAIDET_NODES[levels]


def nearest(x, size):
    """Nearest upsampling by index: out[i, j] = x[floor(i * h / H), floor(j * w / W)]."""
    h, w = x.shape[-2:]
    rows = [i * h // size[0] for i in range(size[0])]
    cols = [j * w // size[1] for j in range(size[1])]
    return x[..., rows, :][..., cols]


def pool_down(x):
    """3x3 max over the window centred at (2i, 2j), out of range ignored."""
    h, w = x.shape[-2:]
    out = x.new_empty(*x.shape[:-2], -(-h // 2), -(-w // 2))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            window = x[..., max(2 * i - 1, 0) : 2 * i + 2, max(2 * j - 1, 0) : 2 * j + 2]
            out[..., i, j] = window.amax(dim=(-2, -1))
    return out


def test_three_level_layer_matches_the_formula():
    torch.manual_seed(0)
    layer = BiFPNLayer([4, 8, 6], 6, norm="")
    assert not hasattr(layer, "lateral_2_f2")  # level 2 already has 6 channels
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("weights_"):
                p.copy_(torch.randn(p.shape))  # negative weights are cut by the ReLU
    feats = [torch.randn(2, 4, 13, 11), torch.randn(2, 8, 7, 6), torch.randn(2, 6, 4, 3)]

    def conv(name, x):
        m = getattr(layer, name)
        return F.conv2d(x, m.weight, m.bias, padding=m.padding)

    def fuse(name, xs):
        w = getattr(layer, f"weights_{name}").clamp(min=0)
        s = sum(wi * x for wi, x in zip(w / (w.sum() + 1e-4), xs))
        return conv(f"outputs_{name}", s * torch.sigmoid(s))

    p0, p1, p2 = feats
    td1 = fuse("f1_1_2", [conv("lateral_1_f1", p1), nearest(p2, (7, 6))])
    out0 = fuse("f0_0_3", [conv("lateral_0_f0", p0), nearest(td1, (13, 11))])
    out1 = fuse("f1_1_3_4", [conv("lateral_1_f1", p1), td1, pool_down(out0)])
    out2 = fuse("f2_2_5", [p2, pool_down(out1)])
    got = layer(feats)
    for g, e in zip(got, (out0, out1, out2)):
        assert g.shape == e.shape
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-6)


def tiny_bifpn_cfg(**overrides):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.BACKBONE.NAME", "build_fcos_resnet_bifpn_backbone",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
        "MODEL.BiFPN.IN_FEATURES", ["res3", "res4", "res5"], "MODEL.BiFPN.OUT_CHANNELS", 16,
        "MODEL.BiFPN.NUM_REPEATS", 2, "MODEL.BiFPN.NORM", "BN",
    ])
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_outputs_strides_and_odd_sizes():
    backbone = build_backbone(tiny_bifpn_cfg())
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert {s.channels for s in shapes.values()} == {16}
    # 160 x 96: P6 and P7 round up (3 x 2, 2 x 1), as FCOS's grid expects.
    out = backbone(torch.randn(2, 3, 160, 96))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(20, 12), (10, 6), (5, 3), (3, 2), (2, 1)]
    # 64 px high: P6 and P7 are both 1 high; AdelaiDet raises there, pooling still fits.
    out = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    registered = {k for k, _ in BACKBONE_REGISTRY}
    assert {"build_fcos_resnet_fpn_backbone", "build_fcos_resnet_bifpn_backbone"} <= registered
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.randn(1, 3, 100, 96))


def test_fusion_weights_learn():
    backbone = build_backbone(tiny_bifpn_cfg())
    sum(v.square().mean() for v in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    weights = [p for n, p in backbone.named_parameters() if ".weights_f" in n]
    assert len(weights) == 2 * 8 and all(p.grad.abs().sum() > 0 for p in weights)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.BiFPN.NUM_REPEATS", 0, "MODEL.BiFPN.NUM_REPEATS"),
        ("MODEL.BiFPN.NORM", "LN", "MODEL.BiFPN.NORM"),
        ("MODEL.BiFPN.IN_FEATURES", ["res2", "res3", "res4", "res5"], "MODEL.BiFPN.IN_FEATURES"),
    ],
)
def test_bad_keys_are_named(key, value, message):
    cfg = tiny_bifpn_cfg(**{key: value})
    with pytest.raises(UnsupportedConfigError, match=message) as e:
        collect_problems(cfg, [check_backbone_cfg])
    assert len(e.value.problems) == 1


def test_validate_cfg_reads_the_bifpn_keys():
    cfg = tiny_bifpn_cfg(**{"MODEL.BiFPN.OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 24})
    cfg.MODEL.DEVICE = "cpu"
    # FCOS's GN needs the BiFPN's channels, not the FPN's, to divide by 32.
    validate_cfg(cfg)
    cfg.MODEL.BiFPN.OUT_CHANNELS = 48
    with pytest.raises(UnsupportedConfigError, match="MODEL.BiFPN.OUT_CHANNELS must divide by 32"):
        validate_cfg(cfg)
    cfg.MODEL.BiFPN.OUT_CHANNELS = 64
    cfg.MODEL.BiFPN.IN_FEATURES = ["res3", "res4"]
    with pytest.raises(UnsupportedConfigError, match="BiFPN.IN_FEATURES needs res5"):
        validate_cfg(cfg)


def test_lone_tiny_image_names_the_bifpn_norm():
    cfg = tiny_cfg(**STUDENT, **{
        "MODEL.BACKBONE.NAME": "build_fcos_resnet_bifpn_backbone",
        "MODEL.BiFPN.IN_FEATURES": ["res3", "res4", "res5"], "MODEL.BiFPN.OUT_CHANNELS": 32,
        "MODEL.BiFPN.NUM_REPEATS": 1, "MODEL.BiFPN.NORM": "BN",
    })
    model = build_model(cfg).train()
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:40, 20:50] = True
    instances = Instances(
        (64, 64), gt_boxes=torch.tensor([[20.0, 10.0, 50.0, 40.0]]),
        gt_classes=torch.tensor([1]), gt_masks=masks,
    )
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    # A lone 64 px image: P6 is 1x1, one value per channel for the norm of its first node.
    with pytest.raises(ValueError, match=r"repeated_bifpn\.0\.outputs_f3_3_4\.norm.*MODEL\.BiFPN\.NORM"):
        model([{"image": image, "instances": instances}])
