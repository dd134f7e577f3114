import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from condinst_percep.config import get_cfg
from condinst_percep.layers import (
    Conv2d,
    FrozenBatchNorm2d,
    NaiveSyncBatchNorm,
    ShapeSpec,
    c2_msra_fill,
    c2_xavier_fill,
    get_norm,
    guard_batch_statistics,
)
from condinst_percep.modeling.backbone import (
    BasicBlock,
    BottleneckBlock,
    build_backbone,
    build_fcos_resnet_fpn_backbone,
)

TSV = Path(__file__).resolve().parent / "assets" / "condinst_r50_state_dict.tsv"


def reference_backbone_rows() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in TSV.read_text().splitlines():
        if line.startswith("backbone."):
            key, shape, _ = line.split("\t")
            dims = tuple(int(s) for s in shape.strip("(,)").split(",") if s.strip())
            rows.append((key[len("backbone.") :], dims))
    return rows


def tiny_cfg(depth: int = 18, **resnets):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8 if depth < 50 else 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 64 if depth < 50 else 4
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    for k, v in resnets.items():
        cfg.MODEL.RESNETS[k] = v
    return cfg


def randomise_norms(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


# --- against AdelaiDet's state_dict -------------------------------------------------


def test_r50_backbone_matches_adelaidet_state_dict():
    backbone = build_backbone(get_cfg())
    sd = backbone.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == reference_backbone_rows()
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
        cfg = tiny_cfg(50, STRIDE_IN_1X1=flag)
        res3 = build_backbone(cfg).bottom_up.res3[0]
        assert (res3.conv1.stride[0], res3.conv2.stride[0]) == (conv1_stride, conv2_stride)


# --- FPN against an independent top-down computation ---------------------------------------------


def test_fpn_forward_against_reference():
    cfg = tiny_cfg(18, NORM="BN")
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
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.TOP_LEVELS = top_levels
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == names
    assert list(backbone(torch.zeros(1, 3, 64, 64))) == names
    assert hasattr(backbone, "top_block") and (backbone.top_block is None) == (top_levels == 0)


def test_tiny_r18_and_r34_from_scratch_channels():
    for depth in (18, 34):
        backbone = build_fcos_resnet_fpn_backbone(tiny_cfg(depth))
        res = backbone.bottom_up.output_shape()
        assert [res[f].channels for f in ("res3", "res4", "res5")] == [16, 32, 64]
        assert backbone.fpn_lateral5.weight.shape == (16, 64, 1, 1)


def test_input_errors():
    backbone = build_backbone(tiny_cfg())
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.zeros(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        backbone(torch.zeros(1, 1, 64, 64))
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_vovnet_fpn_backbone"
    with pytest.raises(ValueError, match="build_vovnet_fpn_backbone.*build_fcos_resnet_bifpn"):
        build_backbone(cfg)


# --- freezing and initialisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "freeze_at, frozen",
    [(0, []), (1, ["stem"]), (2, ["stem", "res2"]), (5, ["stem", "res2", "res3", "res4", "res5"])],
)
def test_freeze_at(freeze_at, frozen):
    cfg = tiny_cfg(NORM="BN")
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


def test_c2_fills_on_small_layers():
    conv = nn.Conv2d(4, 6, 3)
    c2_xavier_fill(conv)
    assert conv.weight.abs().max() <= math.sqrt(3 / 36) and torch.all(conv.bias == 0)
    c2_msra_fill(conv)
    assert torch.all(conv.bias == 0)


# --- normalisation layers ------------------------------------------------------------------------


def test_frozen_bn_closed_form_and_grad_path():
    bn = FrozenBatchNorm2d(3)
    randomise_norms(bn)
    x = torch.randn(2, 3, 4, 5)
    mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    w, b = bn.weight[:, None, None], bn.bias[:, None, None]
    expected = (x - mean) / torch.sqrt(var + 1e-5) * w + b
    torch.testing.assert_close(bn(x), expected)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(bn(xg), expected)
    bn(xg).sum().backward()
    slope = bn.weight / torch.sqrt(bn.running_var + 1e-5)
    torch.testing.assert_close(xg.grad, slope[None, :, None, None].expand_as(x))
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert bn(torch.zeros(0, 3, 4, 5)).shape == (0, 3, 4, 5)
    assert FrozenBatchNorm2d(3)(x).allclose(x, atol=1e-6)


def test_frozen_bn_loads_old_versions_and_bn_checkpoints():
    bn = FrozenBatchNorm2d(2)
    # Version 1: no running statistics stored -> identity statistics.
    sd = {"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, -1.0])}
    sd_meta = type("SD", (dict,), {})(sd)
    sd_meta._metadata = {"": {"version": 1}}
    bn.load_state_dict(sd_meta)
    torch.testing.assert_close(bn.running_var, torch.ones(2) - 1e-5)
    torch.testing.assert_close(bn.running_mean, torch.zeros(2))
    # Version 2 stored running_var without eps.
    stats = {"running_mean": torch.zeros(2), "running_var": torch.full((2,), 4.0)}
    sd2 = type("SD", (dict,), {})({**sd, **stats})
    sd2._metadata = {"": {"version": 2}}
    bn.load_state_dict(sd2)
    torch.testing.assert_close(bn.running_var, torch.full((2,), 4.0 - 1e-5))
    # A BatchNorm2d state_dict (with num_batches_tracked) loads strictly.
    ref = nn.BatchNorm2d(2)
    randomise_norms(ref)
    bn.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(bn(x), ref.eval()(x))


def test_convert_frozen_batchnorm_keeps_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert isinstance(model[1], FrozenBatchNorm2d)
    torch.testing.assert_close(model(x), before)


def test_get_norm():
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert type(get_norm("BN", 8)) is nn.BatchNorm2d
    assert type(get_norm("SyncBN", 8)) is NaiveSyncBatchNorm
    assert type(get_norm("nnSyncBN", 8)) is nn.SyncBatchNorm
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    with pytest.raises(ValueError, match="GN"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="'LN'"):
        get_norm("LN", 8)


def test_naive_sync_bn_single_process_is_batchnorm():
    torch.manual_seed(0)
    sync, plain = NaiveSyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_guard_batch_statistics_names_layer_and_key_only_where_torch_would_fail():
    model = nn.Sequential()
    model.add_module("a", nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)))
    model.add_module("b", nn.Sequential(NaiveSyncBatchNorm(3), FrozenBatchNorm2d(3)))
    guard_batch_statistics(model, {"a.": "MODEL.A.NORM"})
    lone = torch.randn(1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"^a\.1: its batch norm \(chosen by MODEL.A.NORM\) cannot "
                       r"compute statistics in training from one value per channel \(input \(1, 3, 1, 1\)\)"):
        model(lone)
    model.a.eval()  # running statistics; the next training BN has no key in the map
    with pytest.raises(ValueError, match=r"^b\.0: its batch norm cannot compute"):
        model(lone)
    assert model(torch.randn(2, 2, 1, 1)).shape == (2, 3, 1, 1)  # two values: torch's BN works
    assert model(torch.randn(1, 2, 1, 2)).shape == (1, 3, 1, 2)
    model.eval()
    assert model(lone).shape == (1, 3, 1, 1)
    assert not model.b[1]._forward_pre_hooks  # FrozenBN has no batch statistics


def test_conv2d_wrapper_children():
    conv = Conv2d(3, 4, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(4), activation=F.relu)
    norm_keys = ["norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"]
    assert list(conv.state_dict()) == ["weight"] + norm_keys
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(conv(x), F.relu(F.conv2d(x, conv.weight, padding=1)))


def _sync_bn_worker(rank: int, init_file: str, x: torch.Tensor, w: torch.Tensor, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        bn = NaiveSyncBatchNorm(3)
        local = x[rank * 2 : rank * 2 + 2].clone().requires_grad_()
        out = bn(local)
        (out * w[rank * 2 : rank * 2 + 2]).sum().backward()
        results[rank] = (out.detach(), local.grad, bn.running_mean.clone(), bn.running_var.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_naive_sync_bn_two_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    x, w = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_sync_bn_worker, args=(str(tmp_path / "init"), x, w, results), nprocs=2)
        results = dict(results)
    bn = nn.BatchNorm2d(3)
    xr = x.clone().requires_grad_()
    out = bn(xr)
    (out * w).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), out.detach(), **tol)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), xr.grad, **tol)
    torch.testing.assert_close(results[0][2], bn.running_mean)
    # detectron2 keeps the biased batch variance in running_var; torch's BN the unbiased one.
    biased_var = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(results[1][3], 0.9 + 0.1 * biased_var, **tol)


def test_group_norm_resnet():
    cfg = tiny_cfg(18, NORM="GN", STEM_OUT_CHANNELS=32, RES2_OUT_CHANNELS=32)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_backbone(cfg)
    norms = [m.norm for m in backbone.bottom_up.modules() if isinstance(m, Conv2d)]
    assert norms and all(isinstance(n, nn.GroupNorm) and n.num_groups == 32 for n in norms)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert out["p3"].shape == (2, 16, 8, 8)
    out["p7"].sum().backward()
    assert backbone.bottom_up.stem.conv1.norm.weight.grad is not None
