"""The frozen, randomly weighted VGG-like loss network of the generic perceptual loss.

Liu et al., "Generic Perceptual Loss for Modeling Structured Output Dependencies", CVPR 2021,
Sec. 3 and 4.1: blocks of ``structure[i]`` 3×3 convolutions, each followed by ReLU, a 2×2
max-pool at the end of every block, widths 64, 128, 256, 512, 512; weights never trained.
"""
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import check_map

__all__ = ["RandomPerceptualNet", "VGG_STRUCTURES"]

VGG_WIDTHS = (64, 128, 256, 512, 512)
# torchvision's VGG configurations (without batch norm), as convolutions per block.
VGG_STRUCTURES = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
INITS = ("he", "normal", "uniform", "xavier")


def vgg_arch(structure: tuple[int, ...], widths: tuple[int, ...], kernel_size: int) -> str | None:
    """The torchvision VGG ("vgg11", ...) with these convolutions per block, widths and kernel
    size (whose weights :meth:`RandomPerceptualNet.from_torchvision_vgg` loads); None if none."""
    if tuple(widths) != VGG_WIDTHS or kernel_size != 3:
        return None
    return {s: name for name, s in VGG_STRUCTURES.items()}.get(tuple(structure))


class _FrozenConvFunction(torch.autograd.Function):
    """``conv2d(x, weight, bias)``, stride 1, "same" padding, differentiable in ``x`` only;
    the output in channels_last memory format if ``channels_last``.

    The input gradient of a stride-1 convolution with padding k // 2 is the output gradient
    convolved, with the same padding, by the kernel flipped in space with its in/out channels
    swapped. It is computed here as that forward convolution because oneDNN's backward-data
    kernel is 2-5x slower than its forward kernel when the convolution's input is narrow (the
    1-channel masks of the first layer: ``benchmarks/bench_kernels.py``); for other shapes both
    cost the same.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channels_last: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        out = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)
        if channels_last:
            # A 1-channel input has no distinct channels_last layout, so the convolution
            # keeps NCHW unless told.
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        adjoint = weight.to(grad.dtype).flip((2, 3)).transpose(0, 1)
        # grad already has the forward's compute dtype; an autocast active around backward()
        # must not recast it.
        with torch.autocast(grad.device.type, enabled=False):
            grad_x = F.conv2d(grad, adjoint, padding=weight.shape[-1] // 2)
        return grad_x.to(ctx.input_dtype), None, None, None


class FrozenConv2d(nn.Module):
    """A stride-1 "same"-padded convolution whose weight and bias are non-persistent buffers.

    Buffers, not parameters: they never require grad, never reach an optimizer built from a
    parent's ``parameters()``, are absent from ``state_dict()`` (the weights are rebuilt from
    the seed or the weight file), and still follow ``.to(device, dtype)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        return _FrozenConvFunction.apply(x, self.weight, self.bias, channels_last)

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return f"{c_in}, {c_out}, kernel_size={k}, frozen"


def _draw_weight(
    shape: tuple[int, int, int, int], init: str, init_scale: float | None, gen: torch.Generator
) -> torch.Tensor:
    c_out, c_in, k, _ = shape
    w = torch.empty(shape, dtype=torch.float32)
    if init == "he":
        return w.normal_(0.0, math.sqrt(2.0 / (k * k * c_in)), generator=gen)
    if init == "normal":
        return w.normal_(0.0, init_scale, generator=gen)
    if init == "uniform":
        return w.uniform_(-init_scale, init_scale, generator=gen)
    # Xavier-normal with gain 1: std = sqrt(2 / (fan_in + fan_out)).
    return w.normal_(0.0, math.sqrt(2.0 / (k * k * (c_in + c_out))), generator=gen)


class RandomPerceptualNet(nn.Module):
    """VGG-like network with frozen weights drawn from a dedicated, seeded generator.

    Args:
        in_channels: channels C of the dense output it embeds (1 for instance masks or depth,
            the number of classes for softmax maps).
        structure: convolutions per block; ``(2, 2, 4, 4, 4)`` is VGG19, the paper's choice.
        widths: output channels of each block (same length as ``structure``).
        kernel_size: odd, positive; "same" zero padding, stride 1.
        init: ``"he"`` N(0, sqrt(2 / (k²·c_in))) — the paper's; ``"normal"`` N(0, init_scale);
            ``"uniform"`` U[-init_scale, init_scale]; ``"xavier"`` Xavier-normal (gain 1).
            Biases are zero for every scheme.
        init_scale: std (``"normal"``) or half-width (``"uniform"``); must be None otherwise.
        seed: seed of the CPU ``torch.Generator`` the weights are drawn from, block by block,
            conv by conv, so every process and every resumed run builds the same network
            whatever the global RNG state. Move the network with ``.to(device)`` afterwards.

    Max-pools are 2×2, stride 2, in ceil mode: a border row or column of an odd-sized input is
    pooled rather than dropped, and a block input smaller than 2×2 (e.g. 1×1) passes the pool
    with its size rounded up (1 stays 1), so any input of at least 1×1 is accepted.

    ``forward(x, channels_last=False)``: ``x`` (N, C, H, W) float, any memory format → list of
    ``num_blocks`` tensors, block i of shape (N, widths[i], ceil(H / 2^(i+1)), ceil(W /
    2^(i+1))); ``channels_last`` computes every layer in NHWC (same values; faster convolutions
    and pooling for narrow layers on the CPU, and on tensor-core GPUs). Inputs whose
    dtype differs from the network's (float32 unless you ``.to()`` it) are converted to it, so
    a bf16 prediction never casts the network; under autocast the convolutions run in the
    autocast dtype.
    """

    def __init__(
        self,
        in_channels: int,
        structure: Sequence[int] = (2, 2, 4, 4, 4),
        widths: Sequence[int] = VGG_WIDTHS,
        kernel_size: int = 3,
        init: str = "he",
        init_scale: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        structure, widths = tuple(structure), tuple(widths)
        _check_positive_int("in_channels", in_channels)
        if len(structure) == 0:
            raise ValueError(f"structure must name at least one block, got {structure!r}")
        for name, values in (("structure", structure), ("widths", widths)):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ValueError(f"{name} must hold positive ints, got {values!r}")
        if len(widths) != len(structure):
            raise ValueError(
                f"widths must have one entry per block of structure={structure!r}, got {widths!r}"
            )
        _check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if init in ("normal", "uniform"):
            if init_scale is None or not math.isfinite(init_scale) or init_scale <= 0:
                raise ValueError(
                    f"init={init!r} needs a positive, finite init_scale, got {init_scale!r}"
                )
        elif init_scale is not None:
            raise ValueError(f"init={init!r} takes no init_scale, got {init_scale!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")

        self.in_channels = in_channels
        self.structure = structure
        self.widths = widths
        self.kernel_size = kernel_size
        self.init = init
        self.init_scale = init_scale
        self.seed = seed
        # Set by from_torchvision_vgg: a 1×1 convolution C→3 in front of pretrained weights.
        self.input_proj: FrozenConv2d | None = None

        gen = torch.Generator(device="cpu").manual_seed(seed)
        blocks = []
        c_in = in_channels
        for num_convs, c_out in zip(structure, widths):
            convs = []
            for _ in range(num_convs):
                shape = (c_out, c_in, kernel_size, kernel_size)
                weight = _draw_weight(shape, init, init_scale, gen)
                convs.append(FrozenConv2d(weight, torch.zeros(c_out)))
                c_in = c_out
            blocks.append(nn.ModuleList(convs))
        self.blocks = nn.ModuleList(blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def out_channels(self) -> int:
        return self.widths[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0][0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.blocks[0][0].weight.device

    def support_radius(self, level: int) -> int:
        """How far (input pixels) an input pixel reaches beyond the cell of block ``level``.

        The output of block ``level`` at grid cell q (stride J = 2^(level+1)) depends on input
        pixels [q·J − r, q·J + J − 1 + r] with r returned here: each k×k convolution adds
        (k // 2) times the stride of its input. The receptive field is 2·r + J.
        """
        if not isinstance(level, int) or not 0 <= level < self.num_blocks:
            raise ValueError(f"level must be an int in [0, {self.num_blocks}), got {level!r}")
        radius, stride = 0, 1
        for num_convs in self.structure[: level + 1]:
            radius += num_convs * (self.kernel_size // 2) * stride
            stride *= 2
        return radius

    def receptive_field(self, level: int) -> int:
        """Receptive field (input pixels, per axis) of one output cell of block ``level``."""
        return 2 * self.support_radius(level) + 2 ** (level + 1)

    def maps_zero_to_zero(self) -> bool:
        """True when every bias is 0, so a zero input gives zero features (φ(0) = 0)."""
        convs = [conv for block in self.blocks for conv in block]
        if self.input_proj is not None:
            convs.append(self.input_proj)
        return all(not bool(conv.bias.any()) for conv in convs)

    @classmethod
    def from_torchvision_vgg(
        cls, path: str | os.PathLike, in_channels: int, arch: str = "vgg19", seed: int = 0
    ) -> "RandomPerceptualNet":
        """The paper's "T" variant: ImageNet VGG weights behind a seeded 1×1 convolution C→3.

        Args:
            path: local file saved with ``torch.save`` holding a torchvision VGG state_dict
                (``features.<i>.weight`` / ``features.<i>.bias``, i the index in torchvision's
                ``features`` Sequential; other keys such as ``classifier.*`` are ignored).
            in_channels: channels C of the dense output.
            arch: ``"vgg11"``, ``"vgg13"``, ``"vgg16"`` or ``"vgg19"`` (no batch-norm variants).
            seed: seeds the 1×1 projection, drawn He fan-in (std sqrt(2 / C)), zero bias.
        """
        if arch not in VGG_STRUCTURES:
            raise ValueError(f"arch must be one of {tuple(VGG_STRUCTURES)}, got {arch!r}")
        _check_positive_int("in_channels", in_channels)
        structure = VGG_STRUCTURES[arch]
        net = cls(3, structure=structure, seed=seed)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        # torchvision's features: per conv "Conv2d, ReLU" (2 entries), per block a MaxPool2d.
        expected = {}
        index = 0
        for block in net.blocks:
            for conv in block:
                expected[f"features.{index}.weight"] = (conv, "weight")
                expected[f"features.{index}.bias"] = (conv, "bias")
                index += 2
            index += 1
        unexpected = sorted(set(features) - set(expected))
        if unexpected:
            raise ValueError(
                f"{path}: keys {unexpected[:4]} are not in torchvision's {arch} features "
                "(wrong arch, or a batch-norm VGG?)"
            )
        for key, (conv, attr) in expected.items():
            if key not in features:
                raise ValueError(f"{path}: key {key!r} of torchvision's {arch} is missing")
            value, ref = features[key], getattr(conv, attr)
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(
                    f"{path}: {key!r} has shape {tuple(value.shape)}, {arch} needs "
                    f"{tuple(ref.shape)}"
                )
            setattr(conv, attr, value.detach().to(torch.float32).clone())

        gen = torch.Generator(device="cpu").manual_seed(seed)
        proj = torch.empty(3, in_channels, 1, 1)
        proj.normal_(0.0, math.sqrt(2.0 / in_channels), generator=gen)
        net.input_proj = FrozenConv2d(proj, torch.zeros(3))
        net.in_channels = in_channels
        net.init = f"torchvision:{arch}"
        return net

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> list[torch.Tensor]:
        check_map("x", x, self.in_channels)
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must be at least 1x1 pixels, got shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(
                f"x is on {x.device} but the network is on {self.device}; move it with .to()"
            )
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.input_proj is not None:
            x = self.input_proj(x, channels_last=channels_last)
        outputs = []
        for block in self.blocks:
            for i, conv in enumerate(block):
                x = conv(x, channels_last=channels_last)
                if i == len(block) - 1:
                    # max-pool(ReLU(x)) == ReLU(max-pool(x)), with the same gradient (the pool
                    # picks the same element; where the maximum is <= 0 both give 0), and the
                    # ReLU then runs on a quarter of the pixels.
                    x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
                # In place is safe: neither conv's nor max-pool's backward needs this tensor.
                x = F.relu(x, inplace=True)
            outputs.append(x)
        return outputs

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, structure={self.structure}, widths={self.widths}, "
            f"kernel_size={self.kernel_size}, init={self.init!r}, init_scale={self.init_scale}, "
            f"seed={self.seed}"
        )


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
