"""PerceptualLoss: values against a per-instance loop and closed forms, gradient paths, errors
named by argument, the value checks' switch and from_config. Chunking and precision:
test_loss_chunks_and_precision.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from tests.perceptual.loss_helpers import STRUCTURE, assert_close_rel, small_net, soft_masks


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


@pytest.mark.parametrize("layer_weights", [None, (0.25, 0.5, 1.0), (1.0, 0.0, 0.0)])
def test_matches_naive_per_instance_loop(layer_weights):
    net = small_net()
    loss = PerceptualLoss(net, layer_weights=layer_weights, loss_weight=0.1)
    pred = soft_masks(4, (20, 23), seed=1).requires_grad_(True)
    target = soft_masks(4, (20, 23), seed=2)
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


def test_identical_inputs_zero_loss_and_gradient():
    loss = PerceptualLoss(small_net(), (1.0, 1.0, 1.0))
    pred = soft_masks(2, (16, 16), seed=9).requires_grad_(True)
    out = loss(pred, pred.detach().clone())
    out.backward()
    assert out.item() == 0.0
    assert torch.count_nonzero(pred.grad) == 0


def test_closed_forms_zero_input_and_homogeneity():
    net = small_net()
    loss = PerceptualLoss(net, loss_weight=0.1)
    target = soft_masks(3, (16, 16), seed=10)
    pred = soft_masks(3, (16, 16), seed=11)
    # f(0) = 0: the loss against an empty prediction is λ · mean |φ(target)|².
    expected = 0.1 * net(target)[-1].square().flatten(1).mean(1)
    torch.testing.assert_close(loss(torch.zeros_like(target), target, reduction="none"), expected)
    # f(a·x) = a·f(x): the loss is quadratic in the input scale.
    torch.testing.assert_close(loss(2.5 * pred, 2.5 * target), 6.25 * loss(pred, target),
                               rtol=1e-5, atol=0)


def test_one_instance_one_pixel_difference():
    loss = PerceptualLoss(small_net(), chunk_size=1)
    target = soft_masks(1, (17, 17), seed=12)
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
    net = small_net()
    pred, target = soft_masks(4, (16, 16), seed=13), soft_masks(4, (16, 16), seed=14)
    ref = PerceptualLoss(net)(pred, target)
    for chunk_size in (None, 3):
        loss = PerceptualLoss(net, chunk_size=chunk_size)
        out = loss(pred, target)
        assert out.grad_fn is None
        assert_close_rel(out, ref)
        with torch.no_grad():
            assert_close_rel(loss(pred.clone().requires_grad_(True), target), ref)
        t = target.clone().requires_grad_(True)
        p = pred.clone().requires_grad_(True)
        loss(p, t).backward()
        assert t.grad is None and p.grad is not None


def test_no_instances():
    loss = PerceptualLoss(small_net(), chunk_size=2)
    pred = torch.rand(0, 1, 16, 16, requires_grad=True)
    out = loss(pred, torch.rand(0, 1, 16, 16))
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert pred.grad.shape == pred.shape
    assert loss(pred, torch.rand(0, 1, 16, 16), reduction="none").shape == (0,)
    index = torch.zeros(0, dtype=torch.long)
    assert loss(pred, torch.rand(2, 1, 16, 16), target_index=index).item() == 0.0


def test_bool_targets_are_accepted():
    loss = PerceptualLoss(small_net())
    gt = soft_masks(2, (16, 16), seed=20) > 0.5
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
        PerceptualLoss(small_net(), **kwargs)
    with pytest.raises(ValueError, match="net.*Linear"):
        PerceptualLoss(nn.Linear(2, 2))


def test_forward_errors_name_argument_and_value():
    loss = PerceptualLoss(small_net())
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

    loss = PerceptualLoss(small_net(), chunk_size=1)
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
