"""Crop-to-box of PerceptualLoss: exact against the uncropped loss, windows, options, errors."""
import pytest
import torch
import torch.nn.functional as F

from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.perceptual.crop import bucket_lengths, plan_crops

STRUCTURE, WIDTHS = (1, 2, 1), (8, 12, 16)
H, W = 50, 70
BOXES = torch.tensor(
    [
        [3.0, 2.0, 20.0, 15.0],  # touches nothing
        [40.0, 30.0, 70.0, 50.0],  # reaches the bottom-right border
        [10.5, 10.2, 30.7, 40.1],  # fractional
        [0.0, 0.0, 70.0, 50.0],  # the whole map
        [60.0, 5.0, 66.0, 12.0],
        [25.0, 20.0, 26.0, 21.0],  # one pixel
    ],
    dtype=torch.float64,
)


def _net(dtype=torch.float64, **kwargs):
    return RandomPerceptualNet(1, structure=STRUCTURE, widths=WIDTHS, seed=3, **kwargs).to(dtype)


def _in_boxes(seed, boxes=BOXES, size=(H, W), dtype=torch.float64):
    """Random maps in [0, 1) inside each box (pixels the box overlaps), exactly 0 outside."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(boxes), 1, *size, generator=gen, dtype=dtype)
    ys = torch.arange(size[0], dtype=torch.float64)[None, :, None] + 0.5
    xs = torch.arange(size[1], dtype=torch.float64)[None, None, :] + 0.5
    b = boxes[:, :, None, None]
    inside = (xs > b[:, 0].floor()) & (xs < b[:, 2].ceil())
    inside = inside & (ys > b[:, 1].floor()) & (ys < b[:, 3].ceil())
    return x * inside[:, None].to(dtype)


def _value_and_grad(loss, pred, target, **kwargs):
    pred = pred.detach().clone().requires_grad_(True)
    upstream = torch.linspace(0.5, 1.5, len(pred), dtype=torch.float64)
    out = loss(pred, target, reduction="none", **kwargs)
    (out * upstream.to(out.dtype)).sum().backward()
    return out.detach(), pred.grad


def test_support_radius_matches_an_impulse_response():
    """Brute force: move one input pixel and see which cells of each block change."""
    net = _net()
    size = 64
    for level in range(net.num_blocks):
        cell = 2 ** (level + 1)
        base = net(torch.zeros(1, 1, size, size, dtype=torch.float64))[level]
        reach = 0
        for col in range(size):
            x = torch.zeros(1, 1, size, size, dtype=torch.float64)
            x[0, 0, size // 2, col] = 1.0
            changed = (net(x)[level] - base).abs().sum(dim=(0, 1, 2)) > 0
            q = size // 2 // cell  # the cell holding row size/2 of the column, same for rows
            if changed[q]:
                # Cell q covers [q·cell, q·cell + cell − 1]; distance of col beyond it.
                reach = max(reach, q * cell - col, col - (q * cell + cell - 1))
        assert reach == net.support_radius(level), level
        assert net.receptive_field(level) == 2 * reach + cell


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("shared", [False, True])
def test_exact_at_the_support_radius_and_not_below(chunk_size, shared):
    net = _net()
    radius = net.support_radius(2)
    pred = _in_boxes(1)
    target = _in_boxes(2)
    kwargs = {}
    if shared:  # each target shared by 2 instances, and non-zero outside every box
        gen = torch.Generator().manual_seed(5)
        target = torch.rand(3, 1, H, W, generator=gen, dtype=torch.float64)
        kwargs["target_index"] = torch.tensor([2, 0, 1, 0, 2, 1])
    ref = PerceptualLoss(net, chunk_size=chunk_size)
    ref_v, ref_g = _value_and_grad(ref, pred, target, **kwargs)
    crop = PerceptualLoss(net, chunk_size=chunk_size, crop_margin=radius)
    v, g = _value_and_grad(crop, pred, target, boxes=BOXES, **kwargs)
    torch.testing.assert_close(v, ref_v, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-14 * ref_g.abs().max().item())
    # One pixel less of margin misses activations at the window borders.
    short = PerceptualLoss(
        net, chunk_size=chunk_size, crop_margin=radius - 1, crop_approximate=True
    )
    v, g = _value_and_grad(short, pred, target, boxes=BOXES, **kwargs)
    assert (v - ref_v).abs().max() > 1e-6 * ref_v.abs().max()


def test_multi_level_weights_and_mean_reduction():
    net = _net()
    loss = PerceptualLoss(net, layer_weights=(0.3, 0.0, 1.0), loss_weight=0.1, crop_margin=9)
    ref = PerceptualLoss(net, layer_weights=(0.3, 0.0, 1.0), loss_weight=0.1)
    pred, target = _in_boxes(3), _in_boxes(4)
    v = loss(pred, target, boxes=BOXES)
    torch.testing.assert_close(v, ref(pred, target), rtol=1e-12, atol=0)
    # Only levels up to the deepest compared one set the margin and the grid.
    shallow = PerceptualLoss(net, layer_weights=(1.0, 0.0, 0.0), crop_margin=net.support_radius(0))
    assert shallow.crop_grid == 2
    v = shallow(pred, target, boxes=BOXES)
    ref_v = PerceptualLoss(net, layer_weights=(1.0, 0.0, 0.0))(pred, target)
    torch.testing.assert_close(v, ref_v, rtol=1e-12, atol=0)


def test_windows_aligned_inside_the_map_bucketed_and_covering():
    gen = torch.Generator().manual_seed(0)
    centre = torch.rand(300, 2, generator=gen) * torch.tensor([336.0, 200.0])
    half = torch.rand(300, 2, generator=gen) * torch.tensor([80.0, 50.0])
    boxes = torch.cat([centre - half, centre + half], dim=1)
    boxes[:5] = torch.tensor([-10.0, -10.0, 400.0, 300.0])  # beyond the map: clipped
    margin, grid, size = 31, 32, (200, 336)
    groups = plan_crops(boxes, size, margin, grid, torch.device("cpu"))
    seen = torch.cat([g.index for g in groups]).sort().values
    assert torch.equal(seen, torch.arange(300))
    assert len(groups) <= len(bucket_lengths(200, grid)) * len(bucket_lengths(336, grid))
    for g in groups:
        for start, length, full, lo, hi in (
            (g.top, g.height, size[0], boxes[g.index, 1], boxes[g.index, 3]),
            (g.left, g.width, size[1], boxes[g.index, 0], boxes[g.index, 2]),
        ):
            assert (start % grid == 0).all() and (start >= 0).all()
            assert (start + length <= full).all()
            need_lo = (lo.clamp(0, full).floor() - margin).clamp(min=0)
            need_hi = (hi.clamp(0, full).ceil() + margin).clamp(max=full)
            assert (start <= need_lo).all() and (start + length >= need_hi).all()
            assert length % grid == full % grid
    assert bucket_lengths(200, 32).tolist() == [8, 40, 72, 104, 136, 200]
    assert bucket_lengths(64, 32).tolist() == [32, 64]


def test_condinst_like_soft_masks_within_tolerance():
    """Sigmoid masks (never exactly 0) concentrated in boxes: 24 proposals over 4 objects."""
    gen = torch.Generator().manual_seed(0)
    size = (64, 96)
    objects = torch.tensor([[5.0, 4.0, 30.0, 28.0], [40.0, 10.0, 90.0, 40.0],
                            [20.0, 35.0, 45.0, 60.0], [70.0, 45.0, 85.0, 62.0]])
    gt_index = torch.arange(4).repeat_interleave(6)
    jitter = torch.randn(24, 4, generator=gen) * 2
    boxes = objects[gt_index] + jitter
    ys = torch.arange(size[0])[None, :, None] + 0.5
    xs = torch.arange(size[1])[None, None, :] + 0.5

    def soft(b, sharp):
        d = torch.minimum(torch.minimum(xs - b[:, 0, None, None], b[:, 2, None, None] - xs),
                          torch.minimum(ys - b[:, 1, None, None], b[:, 3, None, None] - ys))
        return (sharp * d)[:, None]

    logits = (soft(boxes, 1.5) + 0.5 * torch.randn(24, 1, *size, generator=gen)).requires_grad_()
    teacher = torch.sigmoid(soft(objects[gt_index], 2.0)).detach()
    union = torch.cat([torch.minimum(boxes[:, :2], objects[gt_index, :2]),
                       torch.maximum(boxes[:, 2:], objects[gt_index, 2:])], dim=1)
    net = RandomPerceptualNet(1, structure=(1, 1, 1, 1, 1), widths=(8, 16, 16, 32, 32), seed=0)
    ref = PerceptualLoss(net, loss_weight=0.1)
    crop = PerceptualLoss(net, loss_weight=0.1, chunk_size=4, crop_margin=net.support_radius(4))
    ref_v = ref(torch.sigmoid(logits), teacher)
    (ref_g,) = torch.autograd.grad(ref_v, logits)
    v = crop(torch.sigmoid(logits), teacher, boxes=union)
    (g,) = torch.autograd.grad(v, logits)
    assert abs(v.item() - ref_v.item()) <= 1e-3 * ref_v.item()
    assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) >= 0.999


def test_edge_cases_no_instances_tiny_maps_degenerate_boxes():
    net = _net()
    loss = PerceptualLoss(net, crop_margin=9)
    empty = torch.zeros(0, 1, H, W, dtype=torch.float64, requires_grad=True)
    out = loss(empty, empty.detach(), boxes=torch.zeros(0, 4, dtype=torch.float64))
    assert out.item() == 0 and out.requires_grad
    # 1×1 and 3×5 maps: windows are the whole map; a degenerate box (x1 < x0) is a point.
    for size in ((1, 1), (3, 5)):
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
        pred = torch.rand(2, 1, *size, dtype=torch.float64)
        target = torch.rand(2, 1, *size, dtype=torch.float64)
        ref = PerceptualLoss(net)(pred, target, reduction="none")
        v = loss(pred, target, reduction="none", boxes=boxes)
        torch.testing.assert_close(v, ref, rtol=1e-12, atol=0)


def test_precision_and_layout_options():
    net = _net(torch.float32)
    pred, target = _in_boxes(1, dtype=torch.float32), _in_boxes(2, dtype=torch.float32)
    ref_v, ref_g = _value_and_grad(PerceptualLoss(net), pred, target)
    # channels_last: same arithmetic, another memory order.
    v, g = _value_and_grad(PerceptualLoss(net, channels_last=True, chunk_size=2), pred, target)
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-5 * ref_g.abs().max().item())
    # float32 inside the caller's bf16 autocast: the fp32 result.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, g = _value_and_grad(PerceptualLoss(net, autocast_dtype=torch.float32), pred, target)
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=0)
    # bf16 for the network alone, outside any autocast: close, not equal, reduced in float32.
    for chunk_size in (None, 2):
        bf16 = PerceptualLoss(net, autocast_dtype=torch.bfloat16, chunk_size=chunk_size)
        v, g = _value_and_grad(bf16, pred, target)
        assert v.dtype == torch.float32 and not torch.equal(v, ref_v)
        assert ((v - ref_v).abs() / ref_v).max() < 0.05
        assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) > 0.95


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(crop_margin=8), "crop_margin=8 is below the support radius 9"),
        (dict(crop_margin=-1, crop_approximate=True), "crop_margin.*-1"),
        (dict(crop_margin=9.0), "crop_margin.*9.0"),
        (dict(autocast_dtype=torch.float64), "autocast_dtype.*float64"),
        (dict(channels_last=1), "channels_last.*1"),
        (dict(crop_margin=9, crop_approximate="yes"), "crop_approximate.*yes"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerceptualLoss(_net(), **kwargs)


def test_crop_refuses_networks_that_do_not_map_zero_to_zero():
    net = _net()
    net.blocks[1][0].bias[3] = 0.1
    with pytest.raises(ValueError, match="maps 0 to 0"):
        PerceptualLoss(net, crop_margin=20)
    with pytest.raises(ValueError, match="receptive field.*_Wrapped"):
        PerceptualLoss(_Wrapped(), crop_margin=20)


class _Wrapped(torch.nn.Sequential):
    in_channels, num_blocks = 1, 1


def test_forward_errors_for_boxes():
    loss = PerceptualLoss(_net(), crop_margin=9)
    pred, target = _in_boxes(1), _in_boxes(2)
    with pytest.raises(ValueError, match="boxes are required with crop_margin.*None"):
        loss(pred, target)
    with pytest.raises(ValueError, match=r"boxes are required.*crop_margin=None.*\(6, 4\)"):
        PerceptualLoss(_net())(pred, target, boxes=BOXES)
    with pytest.raises(ValueError, match=r"boxes must be a float tensor of shape \(6, 4\).*6, 2"):
        loss(pred, target, boxes=BOXES[:, :2])
    bad = BOXES.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes hold non-finite"):
        loss(pred, target, boxes=bad)


def test_from_config_speed_keys():
    from condinst_percep.config import get_cfg

    cfg = get_cfg()
    kwargs = PerceptualLoss.from_config(cfg)
    assert kwargs["crop_margin"] is None and kwargs["autocast_dtype"] is None
    assert kwargs["channels_last"] is False and kwargs["crop_approximate"] is False
    cfg.MODEL.PERCEP.STRUCTURE = (1, 1, 1, 1, 1)
    cfg.MODEL.PERCEP.CROP_MARGIN = 31
    cfg.MODEL.PERCEP.CROP_APPROXIMATE = False
    cfg.MODEL.PERCEP.AUTOCAST = "bfloat16"
    cfg.MODEL.PERCEP.CHANNELS_LAST = True
    loss = PerceptualLoss(**PerceptualLoss.from_config(cfg))
    assert (loss.crop_margin, loss.autocast_dtype, loss.channels_last) == (
        31, torch.bfloat16, True
    )
    cfg.MODEL.PERCEP.CROP_MARGIN = 30
    with pytest.raises(ValueError, match="crop_margin=30 is below the support radius 31"):
        PerceptualLoss(**PerceptualLoss.from_config(cfg))
    cfg.MODEL.PERCEP.AUTOCAST = "bf16"
    with pytest.raises(ValueError, match="MODEL.PERCEP.AUTOCAST.*'bf16'"):
        PerceptualLoss.from_config(cfg)
