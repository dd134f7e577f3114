import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condinst_percep.perceptual import RandomPerceptualNet

# Conv indices inside torchvision's ``vgg*.features`` Sequential (conv, relu, ..., maxpool).
TORCHVISION_CONV_INDICES = {
    "vgg11": [0, 3, 6, 8, 11, 13, 16, 18],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}
VGG11_CHANNELS = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512),
                  (512, 512), (512, 512)]


def _frozen_convs(net):
    return [conv for block in net.blocks for conv in block]


def _reference_blocks(net, structure):
    """Plain nn.Conv2d / nn.ReLU / nn.MaxPool2d(ceil_mode) blocks holding the same weights."""
    convs = iter(_frozen_convs(net))
    blocks = []
    for num_convs in structure:
        layers = []
        for _ in range(num_convs):
            frozen = next(convs)
            c_out, c_in, k, _ = frozen.weight.shape
            conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
            with torch.no_grad():
                conv.weight.copy_(frozen.weight)
                conv.bias.copy_(frozen.bias)
            layers += [conv, nn.ReLU()]
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        blocks.append(nn.Sequential(*layers))
    return blocks


@pytest.mark.parametrize("size", [(13, 17), (16, 16), (3, 5)])
def test_forward_matches_plain_torch_layers(size):
    structure, widths = (1, 2, 1), (4, 6, 8)
    net = RandomPerceptualNet(2, structure=structure, widths=widths, kernel_size=5, seed=3)
    x = torch.rand(3, 2, *size)
    outs = net(x)
    ref = x
    assert len(outs) == 3
    for out, block, width in zip(outs, _reference_blocks(net, structure), widths):
        ref = block(ref)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert out.shape[1] == width


@pytest.mark.parametrize("in_channels,kernel_size", [(1, 3), (3, 5)])
def test_frozen_conv_input_gradient_passes_gradcheck(in_channels, kernel_size):
    # The input gradient is computed as a forward convolution with the adjoint kernel;
    # finite differences are the independent reference.
    net = RandomPerceptualNet(
        in_channels, structure=(1,), widths=(4,), kernel_size=kernel_size, seed=1
    ).to(torch.float64)
    conv = net.blocks[0][0]
    conv.bias = torch.randn(4, dtype=torch.float64)
    x = torch.randn(2, in_channels, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradient_matches_plain_torch_layers(channels_last):
    # Two convolutions in the first block: the first one's output is ReLU'd in place.
    structure = (2, 2, 1)
    net = RandomPerceptualNet(1, structure=structure, widths=(4, 6, 8), seed=2)
    x = torch.rand(3, 1, 21, 18, requires_grad=True)
    net(x, channels_last=channels_last)[-1].square().sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = ref_x
    for block in _reference_blocks(net, structure):
        ref = block(ref)
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


def test_input_gradient_under_bf16_autocast_has_input_dtype():
    # The same arithmetic as autograd through bf16 convolutions, returned as float32; an
    # autocast left open around backward() does not change it.
    structure = (1, 1)
    net = RandomPerceptualNet(1, structure=structure, widths=(4, 8), seed=4)
    x = torch.rand(2, 1, 16, 12, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)[-1]
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        ref = ref_x
        for block in _reference_blocks(net, structure):
            ref = block(ref)
        ref.float().square().sum().backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=2e-2, atol=1e-3)


def test_channels_last_runs_every_layer_nhwc_with_the_same_values():
    net = RandomPerceptualNet(1, structure=(1, 2), widths=(4, 6), seed=5)
    x = torch.rand(2, 1, 15, 20)
    for out, ref in zip(net(x, channels_last=True), net(x)):
        # A 1-channel input cannot carry the layout: every layer after it must.
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert not out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_block_output_sizes_round_up_and_tiny_inputs_pass():
    net = RandomPerceptualNet(1, structure=(1, 1, 1, 1, 1), widths=(2, 2, 2, 2, 2))
    for size, expected_last in [((1, 1), (1, 1)), ((1, 40), (1, 2)), ((200, 336), (7, 11)),
                                ((33, 47), (2, 2))]:
        outs = net(torch.rand(1, 1, *size))
        h, w = size
        for i, out in enumerate(outs):
            f = 2 ** (i + 1)
            assert out.shape[-2:] == (math.ceil(h / f), math.ceil(w / f))
        assert tuple(outs[-1].shape[-2:]) == expected_last
    one_pixel = net(torch.full((1, 1, 1, 1), 0.7))[-1]
    ref = torch.full((1, 1, 1, 1), 0.7)
    for conv in _frozen_convs(net):
        ref = F.relu(F.conv2d(ref, conv.weight, conv.bias, padding=1))
    torch.testing.assert_close(one_pixel, ref)


def test_default_is_vgg19_with_paper_widths():
    net = RandomPerceptualNet(1)
    shapes = [tuple(c.weight.shape) for c in _frozen_convs(net)]
    assert len(shapes) == 16
    assert [len(b) for b in net.blocks] == [2, 2, 4, 4, 4]
    assert shapes[0] == (64, 1, 3, 3) and shapes[2] == (128, 64, 3, 3)
    assert shapes[-1] == (512, 512, 3, 3) and net.out_channels == 512


@pytest.mark.parametrize(
    "init,init_scale,expected_std",
    [
        ("he", None, math.sqrt(2 / (9 * 64))),
        ("normal", 0.1, 0.1),
        ("uniform", 0.01, 0.01 / math.sqrt(3)),
        ("xavier", None, math.sqrt(2 / (9 * (64 + 128)))),
    ],
)
def test_init_distributions(init, init_scale, expected_std):
    net = RandomPerceptualNet(1, structure=(1, 1), widths=(64, 128), init=init,
                              init_scale=init_scale)
    w = net.blocks[1][0].weight  # 128 x 64 x 3 x 3 = 73728 draws
    assert abs(w.mean().item()) < 0.02 * expected_std * 10
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    if init == "uniform":
        assert w.abs().max().item() <= init_scale
        assert w.abs().max().item() > 0.99 * init_scale
    for conv in _frozen_convs(net):
        assert torch.count_nonzero(conv.bias) == 0


def test_he_first_layer_uses_its_own_fan_in():
    net = RandomPerceptualNet(32, structure=(1,), widths=(256,), kernel_size=3)
    assert net.blocks[0][0].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.02)


def test_weights_depend_on_seed_only_not_on_global_rng():
    torch.manual_seed(1)
    a = RandomPerceptualNet(1, structure=(1, 1), widths=(8, 8), seed=7)
    state = torch.get_rng_state()
    torch.manual_seed(12345)
    torch.rand(100)
    b = RandomPerceptualNet(1, structure=(1, 1), widths=(8, 8), seed=7)
    c = RandomPerceptualNet(1, structure=(1, 1), widths=(8, 8), seed=8)
    for ca, cb in zip(_frozen_convs(a), _frozen_convs(b)):
        assert torch.equal(ca.weight, cb.weight)
    assert not torch.equal(_frozen_convs(a)[0].weight, _frozen_convs(c)[0].weight)
    torch.manual_seed(1)
    RandomPerceptualNet(1, structure=(1, 1), widths=(8, 8), seed=7)
    assert torch.equal(torch.get_rng_state(), state), "building the net consumed global RNG"


class _Parent(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(1, 1, 3, padding=1)
        self.percep = RandomPerceptualNet(1, structure=(1, 1), widths=(4, 4))


def test_frozen_not_in_parameters_optimizer_or_state_dict():
    parent = _Parent()
    assert [n for n, _ in parent.named_parameters()] == ["head.weight", "head.bias"]
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}
    assert all(not b.requires_grad for b in parent.percep.buffers())
    opt = torch.optim.SGD(parent.parameters(), lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2

    # A checkpoint without the loss network's keys loads strictly into a fresh parent.
    fresh = _Parent()
    result = fresh.load_state_dict(_Parent().state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.percep.blocks[0][0].weight, parent.percep.blocks[0][0].weight)

    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    parent.percep(parent.head(x))[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(b.grad is None for b in parent.percep.buffers())


def test_to_moves_and_casts_the_frozen_weights():
    net = RandomPerceptualNet(1, structure=(1, 1), widths=(4, 4))
    ref = _frozen_convs(net)[0].weight.clone()
    net.to(torch.float64)
    assert net.dtype == torch.float64
    assert all(b.dtype == torch.float64 for b in net.buffers())
    torch.testing.assert_close(_frozen_convs(net)[0].weight, ref.double())
    net.to("meta")
    assert all(b.device.type == "meta" for b in net.buffers())


def test_input_dtype_is_converted_not_the_network():
    net = RandomPerceptualNet(1, structure=(1, 1), widths=(4, 4))
    x = torch.rand(2, 1, 8, 8).to(torch.bfloat16)
    out = net(x)[-1]
    assert out.dtype == torch.float32 and net.dtype == torch.float32
    torch.testing.assert_close(out, net(x.float())[-1])


def test_positive_homogeneity_and_zero_input():
    net = RandomPerceptualNet(1, structure=(1, 2), widths=(8, 8))
    x = torch.rand(2, 1, 12, 12)
    for out, scaled in zip(net(x), net(3.5 * x)):
        torch.testing.assert_close(scaled, 3.5 * out, rtol=1e-5, atol=1e-6)
    assert all(torch.count_nonzero(o) == 0 for o in net(torch.zeros(1, 1, 12, 12)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(structure=()), r"structure.*\(\)"),
        (dict(structure=(2, 0)), r"structure.*\(2, 0\)"),
        (dict(structure=(1, 1), widths=(8,)), r"widths.*\(8,\)"),
        (dict(kernel_size=0), "kernel_size.*0"),
        (dict(kernel_size=-3), "kernel_size.*-3"),
        (dict(kernel_size=4), "kernel_size.*4"),
        (dict(init="kaiming"), "init.*'kaiming'"),
        (dict(init="normal"), "init_scale.*None"),
        (dict(init="uniform", init_scale=-1.0), "init_scale.*-1.0"),
        (dict(init="he", init_scale=0.1), "init_scale.*0.1"),
        (dict(seed=1.5), "seed.*1.5"),
    ],
)
def test_constructor_errors_name_argument_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomPerceptualNet(1, **kwargs)


def test_in_channels_and_forward_errors():
    with pytest.raises(ValueError, match="in_channels.*0"):
        RandomPerceptualNet(0)
    net = RandomPerceptualNet(3, structure=(1,), widths=(4,))
    with pytest.raises(ValueError, match=r"4-D.*\(3, 8, 8\)"):
        net(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="1 channels.*in_channels=3"):
        net(torch.rand(2, 1, 8, 8))


def _fake_torchvision_vgg(arch, channels, gen):
    """A state_dict in torchvision's key layout, with a classifier that must be ignored."""
    state = {}
    for index, (c_in, c_out) in zip(TORCHVISION_CONV_INDICES[arch], channels):
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=gen) * 0.1
    state["classifier.0.weight"] = torch.randn(4, 7, generator=gen)
    state["classifier.0.bias"] = torch.randn(4, generator=gen)
    return state


@pytest.fixture(scope="module")
def vgg11_file(tmp_path_factory):
    state = _fake_torchvision_vgg("vgg11", VGG11_CHANNELS, torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("vgg") / "vgg11.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_t_variant_matches_reference_vgg11(vgg11_file):
    path, state = vgg11_file
    net = RandomPerceptualNet.from_torchvision_vgg(path, in_channels=5, arch="vgg11", seed=4)
    assert net.in_channels == 5 and net.structure == (1, 1, 2, 2, 2)
    assert list(net.state_dict()) == [] and list(net.parameters()) == []
    proj = net.input_proj.weight
    assert proj.shape == (3, 5, 1, 1)
    again = RandomPerceptualNet.from_torchvision_vgg(path, in_channels=5, arch="vgg11", seed=4)
    other = RandomPerceptualNet.from_torchvision_vgg(path, in_channels=5, arch="vgg11", seed=5)
    assert torch.equal(again.input_proj.weight, proj)
    assert not torch.equal(other.input_proj.weight, proj)

    # Reference: the 1x1 projection, then torchvision's VGG11 features, layer by layer.
    x = torch.rand(2, 5, 32, 32)
    ref = F.conv2d(x, proj, net.input_proj.bias)
    outs = net(x)
    indices = iter(TORCHVISION_CONV_INDICES["vgg11"])
    for block, out in zip((1, 1, 2, 2, 2), outs):
        for _ in range(block):
            i = next(indices)
            ref = F.relu(F.conv2d(ref, state[f"features.{i}.weight"], state[f"features.{i}.bias"],
                                  padding=1))
        ref = F.max_pool2d(ref, 2, 2)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_torchvision_loader_errors(tmp_path, vgg11_file):
    path, state = vgg11_file
    with pytest.raises(ValueError, match="arch.*'vgg12'"):
        RandomPerceptualNet.from_torchvision_vgg(path, 1, arch="vgg12")
    with pytest.raises(ValueError, match=r"features\.11\.bias.*not in.*vgg16"):
        RandomPerceptualNet.from_torchvision_vgg(path, 1, arch="vgg16")

    missing = dict(state)
    del missing["features.18.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*'features\.18\.bias'.*missing"):
        RandomPerceptualNet.from_torchvision_vgg(tmp_path / "missing.pth", 1, arch="vgg11")

    wrong = dict(state)
    wrong["features.3.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"'features\.3\.weight'.*\(128, 32, 3, 3\)"):
        RandomPerceptualNet.from_torchvision_vgg(tmp_path / "wrong.pth", 1, arch="vgg11")


def test_loss_from_config_builds_the_t_variant(vgg11_file):
    from condinst_percep.config import get_cfg
    from condinst_percep.perceptual import PerceptualLoss

    path, state = vgg11_file
    cfg = get_cfg()
    cfg.MODEL.PERCEP.PRETRAINED_VGG = str(path)
    cfg.MODEL.PERCEP.STRUCTURE = (1, 1, 2, 2, 2)
    cfg.MODEL.PERCEP.SEED = 4
    net = PerceptualLoss.from_config(cfg)["net"]
    direct = RandomPerceptualNet.from_torchvision_vgg(path, in_channels=1, arch="vgg11", seed=4)
    assert net.init == "torchvision:vgg11"
    assert torch.equal(net.input_proj.weight, direct.input_proj.weight)
    assert torch.equal(net.blocks[4][1].weight, state["features.18.weight"])
