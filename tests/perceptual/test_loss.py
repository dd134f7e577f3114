import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet

STRUCTURE, WIDTHS = (1, 2, 1), (8, 12, 16)


def _net(in_channels=1, **kwargs):
    return RandomPerceptualNet(in_channels, structure=STRUCTURE, widths=WIDTHS, seed=11, **kwargs)


def _naive_loss(net, pred, target, layer_weights, loss_weight):
    """Per-instance loop with plain nn.Conv2d / F.max_pool2d built from the net's weights."""
    convs = iter([conv for block in net.blocks for conv in block])
    blocks = []
    for num_convs in STRUCTURE:
        layers = []
        for _ in range(num_convs):
            frozen = next(convs)
            conv = nn.Conv2d(frozen.weight.shape[1], frozen.weight.shape[0], 3, padding=1)
            conv.weight.data.copy_(frozen.weight)
            conv.bias.data.copy_(frozen.bias)
            conv.requires_grad_(False)
            layers.append(conv)
        blocks.append(layers)

    def embed(x):
        outs = []
        for layers in blocks:
            for conv in layers:
                x = F.relu(conv(x))
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            outs.append(x)
        return outs

    values = []
    for i in range(len(pred)):
        total = 0.0
        for w, fp, ft in zip(layer_weights, embed(pred[i : i + 1]), embed(target[i : i + 1])):
            total = total + w * ((fp - ft.detach()) ** 2).sum() / fp.numel()
        values.append(total)
    return loss_weight * torch.stack(values)


def _soft_masks(n, size, seed, channels=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.sigmoid(4 * torch.randn(n, channels, *size, generator=gen))


@pytest.mark.parametrize("layer_weights", [None, (0.25, 0.5, 1.0), (1.0, 0.0, 0.0)])
def test_matches_naive_per_instance_loop(layer_weights):
    net = _net()
    loss = PerceptualLoss(net, layer_weights=layer_weights, loss_weight=0.1)
    pred = _soft_masks(4, (20, 23), seed=1).requires_grad_(True)
    target = _soft_masks(4, (20, 23), seed=2)
    weights = layer_weights or (0.0, 0.0, 1.0)

    ref_pred = pred.detach().clone().requires_grad_(True)
    ref = _naive_loss(net, ref_pred, target, weights, 0.1)
    ref.mean().backward()
    out = loss(pred, target)
    out.backward()
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out, ref.mean(), rtol=1e-5, atol=0)
    atol = 1e-5 * ref_pred.grad.abs().max().item()
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-4, atol=atol)
    per_instance = loss(pred, target, reduction="none")
    torch.testing.assert_close(per_instance, ref.detach(), rtol=1e-5, atol=0)


def _value_and_grad(loss, pred, target, reduction, upstream=None, **kwargs):
    pred = pred.detach().clone().requires_grad_(True)
    out = loss(pred, target, reduction=reduction, **kwargs)
    (out if upstream is None else (out * upstream).sum()).backward()
    return out.detach(), pred.grad


def _assert_close_rel(a, b, rel=3e-6):
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item())


def _rel_gap(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 9])
def test_chunked_value_and_gradient_equal_unchunked(chunk_size, dtype, tol):
    net = _net().to(dtype)
    pred = _soft_masks(5, (24, 19), seed=3).to(dtype)
    target = _soft_masks(5, (24, 19), seed=4).to(dtype)
    upstream = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7], dtype=dtype)
    for reduction, up in (("mean", None), ("none", upstream)):
        weights = (0.5, 0.0, 1.0)
        whole = PerceptualLoss(net, weights, 0.5)
        chunked = PerceptualLoss(net, weights, 0.5, chunk_size=chunk_size)
        ref_v, ref_g = _value_and_grad(whole, pred, target, reduction, up)
        v, g = _value_and_grad(chunked, pred, target, reduction, up)
        assert v.dtype == dtype and g.dtype == dtype
        assert _rel_gap(v, ref_v) <= tol
        # In fp32 the convolution's rounding depends on the batch size (1.5e-6 here between
        # batches of 1 and 5 of the *unchunked* loss), so gradients get a small allowance.
        assert _rel_gap(g, ref_g) <= (tol if dtype == torch.float64 else 3e-6)


class _Box(list):
    """Holds a saved tensor; its finalizer tells when autograd released it."""


def _peak_saved_bytes(loss, pred, target):
    """Peak bytes of autograd-saved tensors alive at once: a property of the graph, no timing."""
    live, peak = [0], [0]

    def release(nbytes):
        live[0] -= nbytes

    def pack(t):
        box = _Box([t])
        nbytes = t.numel() * t.element_size()
        live[0] += nbytes
        peak[0] = max(peak[0], live[0])
        weakref.finalize(box, release, nbytes)
        return box

    pred = pred.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box[0]):
        out = loss(pred, target)
    out.backward()
    return peak[0]


def test_chunking_bounds_the_memory_autograd_keeps():
    net = _net()
    pred, target = _soft_masks(8, (32, 32), seed=5), _soft_masks(8, (32, 32), seed=6)
    whole = _peak_saved_bytes(PerceptualLoss(net), pred, target)
    chunked = _peak_saved_bytes(PerceptualLoss(net, chunk_size=2), pred, target)
    assert whole > 0
    # One chunk of 2 holds a quarter of the activations of 8, plus the injected gradient.
    assert chunked < 0.35 * whole, (chunked, whole)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_target_index_equals_expanded_targets_and_embeds_each_once(chunk_size):
    net = _net()
    unique = _soft_masks(3, (16, 21), seed=7)
    index = torch.tensor([0, 2, 2, 1, 0, 2])
    pred = _soft_masks(6, (16, 21), seed=8)
    loss = PerceptualLoss(net, (0.2, 0.3, 1.0), chunk_size=chunk_size)
    ref_v, ref_g = _value_and_grad(loss, pred, unique[index], "none", torch.arange(6.0))

    seen = []
    handle = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    v, g = _value_and_grad(loss, pred, unique, "none", torch.arange(6.0), target_index=index)
    handle.remove()
    _assert_close_rel(v, ref_v)
    _assert_close_rel(g, ref_g)
    assert sum(seen) == 6 + 3, seen


def test_identical_inputs_zero_loss_and_gradient():
    loss = PerceptualLoss(_net(), (1.0, 1.0, 1.0))
    pred = _soft_masks(2, (16, 16), seed=9).requires_grad_(True)
    out = loss(pred, pred.detach().clone())
    out.backward()
    assert out.item() == 0.0
    assert torch.count_nonzero(pred.grad) == 0


def test_closed_forms_zero_input_and_homogeneity():
    net = _net()
    loss = PerceptualLoss(net, loss_weight=0.1)
    target = _soft_masks(3, (16, 16), seed=10)
    pred = _soft_masks(3, (16, 16), seed=11)
    # f(0) = 0: the loss against an empty prediction is λ · mean |φ(target)|².
    expected = 0.1 * net(target)[-1].square().flatten(1).mean(1)
    torch.testing.assert_close(loss(torch.zeros_like(target), target, reduction="none"), expected)
    # f(a·x) = a·f(x): the loss is quadratic in the input scale.
    torch.testing.assert_close(loss(2.5 * pred, 2.5 * target), 6.25 * loss(pred, target),
                               rtol=1e-5, atol=0)


def test_one_instance_one_pixel_difference():
    loss = PerceptualLoss(_net(), chunk_size=1)
    target = _soft_masks(1, (17, 17), seed=12)
    pred = target.clone()
    pred[0, 0, 8, 8] += 0.5
    pred.requires_grad_(True)
    out = loss(pred, target)
    out.backward()
    assert 0 < out.item() < 1
    assert pred.grad[0, 0, 8, 8] != 0
    # The receptive field of 4 convs and 3 pools reaches far, but not the values themselves:
    # the gradient is finite everywhere.
    assert torch.isfinite(pred.grad).all()


def test_no_grad_paths_and_target_gets_no_gradient():
    net = _net()
    pred, target = _soft_masks(4, (16, 16), seed=13), _soft_masks(4, (16, 16), seed=14)
    ref = PerceptualLoss(net)(pred, target)
    for chunk_size in (None, 3):
        loss = PerceptualLoss(net, chunk_size=chunk_size)
        out = loss(pred, target)
        assert out.grad_fn is None
        _assert_close_rel(out, ref)
        with torch.no_grad():
            _assert_close_rel(loss(pred.clone().requires_grad_(True), target), ref)
        t = target.clone().requires_grad_(True)
        p = pred.clone().requires_grad_(True)
        loss(p, t).backward()
        assert t.grad is None and p.grad is not None


def test_no_instances():
    loss = PerceptualLoss(_net(), chunk_size=2)
    pred = torch.rand(0, 1, 16, 16, requires_grad=True)
    out = loss(pred, torch.rand(0, 1, 16, 16))
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert pred.grad.shape == pred.shape
    assert loss(pred, torch.rand(0, 1, 16, 16), reduction="none").shape == (0,)
    index = torch.zeros(0, dtype=torch.long)
    assert loss(pred, torch.rand(2, 1, 16, 16), target_index=index).item() == 0.0


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_bf16_autocast_on_cpu(chunk_size):
    net = _net()
    loss = PerceptualLoss(net, chunk_size=chunk_size)
    pred, target = _soft_masks(3, (32, 32), seed=15), _soft_masks(3, (32, 32), seed=16)
    ref_v, ref_g = _value_and_grad(loss, pred, target, "mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, g = _value_and_grad(loss, pred, target, "mean")
    assert v.dtype == torch.float32 and g.dtype == torch.float32
    assert net.dtype == torch.float32
    assert (v - ref_v).abs() < 0.05 * ref_v
    assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) > 0.95


def test_fp16_autocast_chunked_gradient_does_not_underflow():
    # Inputs scaled by 1e-3 make the network's activation gradients ~1e-7, below fp16's
    # smallest normal number: the chunked path's inner backward must be scaled like a
    # GradScaler would scale it (without it, the cosine here drops to ~0.95).
    net = _net()
    pred = 1e-3 * _soft_masks(4, (32, 32), seed=15)
    target = 1e-3 * _soft_masks(4, (32, 32), seed=16)
    ref_v, ref_g = _value_and_grad(PerceptualLoss(net), pred, target, "mean")
    with torch.autocast("cpu", dtype=torch.float16):
        v, g = _value_and_grad(PerceptualLoss(net, chunk_size=2), pred, target, "mean")
    assert v.dtype == torch.float32 and torch.isfinite(g).all()
    assert (v - ref_v).abs() < 0.01 * ref_v
    assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) > 0.998


def test_low_precision_input_without_autocast_runs_in_the_network_dtype():
    net = _net()
    loss = PerceptualLoss(net)
    pred, target = _soft_masks(2, (16, 16), seed=17), _soft_masks(2, (16, 16), seed=18)
    half = pred.to(torch.bfloat16).requires_grad_(True)
    out = loss(half, target)
    out.backward()
    assert net.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, loss(half.detach().float(), target))


def test_channels_last_inputs_softmax_maps():
    net = _net(in_channels=4)
    gen = torch.Generator().manual_seed(19)
    pred = torch.softmax(torch.randn(3, 4, 18, 22, generator=gen), dim=1)
    target = torch.softmax(torch.randn(3, 4, 18, 22, generator=gen), dim=1)
    loss = PerceptualLoss(net, chunk_size=2)
    ref_v, ref_g = _value_and_grad(loss, pred, target, "none", torch.ones(3))
    cl = torch.channels_last
    v, g = _value_and_grad(loss, pred.to(memory_format=cl), target.to(memory_format=cl), "none",
                           torch.ones(3))
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6 * ref_g.abs().max().item())


def test_bool_targets_are_accepted():
    loss = PerceptualLoss(_net())
    gt = _soft_masks(2, (16, 16), seed=20) > 0.5
    torch.testing.assert_close(loss(gt.float(), gt), torch.tensor(0.0))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layer_weights=(1.0, 1.0)), r"layer_weights.*\(3\).*2"),
        (dict(layer_weights=(1.0, -1.0, 1.0)), r"layer_weights.*-1\.0"),
        (dict(layer_weights=(0, 0, 0)), r"layer_weights.*\(0, 0, 0\)"),
        (dict(loss_weight=float("nan")), "loss_weight.*nan"),
        (dict(chunk_size=0), "chunk_size.*0"),
        (dict(chunk_size=2.0), "chunk_size.*2.0"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerceptualLoss(_net(), **kwargs)
    with pytest.raises(ValueError, match="net.*Linear"):
        PerceptualLoss(nn.Linear(2, 2))


def test_forward_errors_name_argument_and_value():
    loss = PerceptualLoss(_net())
    p = torch.rand(2, 1, 16, 16)
    nan = p.clone()
    nan[1, 0, 3, 3] = float("nan")
    inf = p.clone()
    inf[0, 0, 0, 0] = float("inf")
    cases = [
        (lambda: loss(p, p, reduction="sum"), "reduction.*'sum'"),
        (lambda: loss(p[0], p), r"pred.*4-D.*\(1, 16, 16\)"),
        (lambda: loss(p, p[:, 0]), r"target.*4-D.*\(2, 16, 16\)"),
        (lambda: loss(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)), "pred has 3 channels"),
        (lambda: loss(p, torch.rand(2, 1, 16, 15)), r"same shape.*\(2, 1, 16, 15\)"),
        (lambda: loss(p, p.to("meta")), "target is on meta but the loss network is on cpu"),
        (lambda: loss(p[:, :, :0], p[:, :, :0]), r"at least 1x1.*\(2, 1, 0, 16\)"),
        (lambda: loss(nan, p), "pred holds non-finite"),
        (lambda: loss(p, inf), "target holds non-finite"),
        (lambda: loss(p, p, target_index=torch.tensor([0])), r"target_index.*\(2,\).*\(1,\)"),
        (lambda: loss(p, p, target_index=torch.tensor([0.0, 1.0])), "target_index.*float32"),
        (lambda: loss(p, p, target_index=torch.tensor([0, 2])), r"target_index.*\[0, 2\).*max 2"),
        (lambda: loss(p, p[:1, :, :8], target_index=torch.tensor([0, 0])),
         r"target maps.*\(1, 1, 8, 16\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_check_values_false_skips_the_value_checks_and_their_synchronisation():
    from condinst_percep.utils.host_sync import HostSyncAudit

    loss = PerceptualLoss(_net(), chunk_size=1)
    p = torch.rand(2, 1, 16, 16, requires_grad=True)
    t = torch.rand(3, 1, 16, 16)
    index = torch.tensor([2, 0])
    with HostSyncAudit() as checked:
        loss(p, t, target_index=index).backward()
    with HostSyncAudit() as unchecked:
        value = loss(p, t, target_index=index, check_values=False)
        value.backward()
    assert checked.total and all("(check_inputs)" in point for point in checked.points)
    assert unchecked.total == 0, unchecked.report()
    torch.testing.assert_close(value, loss(p, t, target_index=index))
    # Unchecked, a NaN input gives a NaN loss (for the training loop to stop on), not an error.
    nan = p.detach().clone()
    nan[0, 0, 0, 0] = float("nan")
    assert torch.isnan(loss(nan, t, target_index=index, check_values=False))


def test_from_config_defaults_and_overrides(tmp_path):
    from condinst_percep.config import get_cfg

    cfg = get_cfg()
    kwargs = PerceptualLoss.from_config(cfg)
    net = kwargs["net"]
    assert (net.in_channels, net.structure, net.init, net.seed) == (1, (2, 2, 4, 4, 4), "he", 0)
    assert kwargs["layer_weights"] is None and kwargs["chunk_size"] == 16
    assert kwargs["loss_weight"] == pytest.approx(0.1)
    ref = RandomPerceptualNet(1)
    assert torch.equal(net.blocks[4][3].weight, ref.blocks[4][3].weight)

    cfg.MODEL.PERCEP.STRUCTURE = (1, 1)
    cfg.MODEL.PERCEP.WIDTHS = (4, 8)
    cfg.MODEL.PERCEP.INIT = "uniform"
    cfg.MODEL.PERCEP.INIT_SCALE = 0.1
    cfg.MODEL.PERCEP.LAYER_WEIGHTS = (0.5, 1.0)
    cfg.MODEL.PERCEP.CHUNK_SIZE = 0
    cfg.MODEL.PERCEP.SEED = 3
    loss = PerceptualLoss(**PerceptualLoss.from_config(cfg, in_channels=2))
    assert loss.net.in_channels == 2 and loss.net.init_scale == 0.1 and loss.net.seed == 3
    assert loss.layer_weights == (0.5, 1.0) and loss.chunk_size is None

    cfg.MODEL.PERCEP.PRETRAINED_VGG = str(tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"STRUCTURE.*\(1, 1\)"):
        PerceptualLoss.from_config(cfg)
