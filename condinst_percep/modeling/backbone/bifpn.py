"""BiFPN on a ResNet (AdelaiDet's ``build_fcos_resnet_bifpn_backbone``; Tan et al., EfficientDet).

Extra levels (P6, P7) are max-pooled from the ResNet's last output, then ``NUM_REPEATS`` BiFPN
layers fuse all levels top-down and bottom-up with fast normalised fusion
``sum_i relu(w_i) x_i / (sum_i relu(w_i) + 1e-4)``, Swish, and a 3x3 conv + norm.

Module names follow AdelaiDet so that its checkpoints load key for key: ``bottom_up.backbone``
(the ResNet), ``bottom_up.res6.reduction``, ``repeated_bifpn.{r}.weights_f{level}_{inputs}``,
``lateral_{input}_f{level}`` and ``outputs_f{level}_{inputs}``, registered in AdelaiDet's order.
"""
from __future__ import annotations

import re

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn import functional as F

from ...config.validate import Report
from ...layers import Conv2d, ShapeSpec, get_norm
from .build import check_neck_cfg, check_padded, register_backbone
from .resnet import ResNet, build_resnet_backbone

# The stability constant of the fast normalised fusion (EfficientDet, AdelaiDet).
FUSION_EPS = 1e-4


def _level(name: str) -> tuple[str, int]:
    """'res5' -> ('res', 5)."""
    match = re.fullmatch(r"([a-zA-Z]+)(\d+)", name)
    if match is None:
        raise ValueError(f"feature name {name!r} is not letters followed by a level number")
    return match.group(1), int(match.group(2))


def max_pool_down(x: torch.Tensor) -> torch.Tensor:
    """3x3 max pool, stride 2, padding 1: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Downsample(nn.Module):
    """An extra pyramid level: 1x1 conv + norm (``reduction``, only when the channel count
    changes; bias only without norm), then :func:`max_pool_down`."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = ""):
        super().__init__()
        self.reduction = None
        if in_channels != out_channels:
            self.reduction = Conv2d(
                in_channels, out_channels, kernel_size=1, bias=norm == "",
                norm=get_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduction is not None:
            x = self.reduction(x)
        return max_pool_down(x)


class ResNetWithTopLevels(nn.Module):
    """``backbone`` (a ResNet) plus ``num_top_levels`` :class:`Downsample` levels chained on
    its last output (``res6``, ``res7`` after ``res5``). Forward: (N, 3, H, W) -> the ResNet's
    outputs plus the extra levels, each (N, C, ceil(H/s), ceil(W/s))."""

    def __init__(self, backbone: ResNet, out_channels: int, num_top_levels: int, norm: str = ""):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.last_feature = max(shapes, key=lambda name: _level(name)[1])
        prefix, last = _level(self.last_feature)
        self._shapes = dict(shapes)
        self.top_names: list[str] = []
        channels, stride = shapes[self.last_feature].channels, shapes[self.last_feature].stride
        for i in range(1, num_top_levels + 1):
            name = f"{prefix}{last + i}"
            self.add_module(name, Downsample(channels, out_channels, norm))
            channels, stride = out_channels, stride * 2
            self._shapes[name] = ShapeSpec(channels=channels, stride=stride)
            self.top_names.append(name)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.backbone(x)
        top = outputs[self.last_feature]
        for name in self.top_names:
            top = getattr(self, name)(top)
            outputs[name] = top
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)


def bifpn_nodes(num_levels: int) -> list[tuple[int, tuple[int, ...]]]:
    """The fusion nodes of one BiFPN layer over ``num_levels`` inputs (0 = finest), as
    (output level, input offsets): offsets < num_levels are the layer's inputs, offset
    num_levels + k the k-th node's output. Top-down from the coarsest level, then bottom-up,
    each bottom-up node also taking the same level's input and top-down node."""
    top = num_levels - 1
    nodes: list[tuple[int, tuple[int, ...]]] = []
    prev = top
    for level in range(top - 1, -1, -1):
        nodes.append((level, (level, prev)))
        prev = num_levels + len(nodes) - 1
    for level in range(1, num_levels):
        top_down = num_levels + (top - 1 - level)
        inputs = (level, top_down, prev) if level < top else (level, prev)
        nodes.append((level, inputs))
        prev = num_levels + len(nodes) - 1
    return nodes


class BiFPNLayer(nn.Module):
    """One BiFPN layer: a list of L maps (N, C_l, H_l, W_l), finest first, each level half the
    size of the one before (ceil), -> L maps (N, out_channels, H_l, W_l).

    Inputs with ``C_l != out_channels`` go through ``lateral_{l}_f{level}`` (1x1 conv with bias
    + norm), one per (input, node level) pair. Finer inputs are :func:`max_pool_down`-ed, coarser
    ones nearest-upsampled to the node's size.
    """

    def __init__(self, in_channels: list[int], out_channels: int, norm: str = ""):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"a BiFPN layer needs at least 2 levels, got {len(in_channels)}")
        self.out_channels = out_channels
        self.nodes = bifpn_nodes(len(in_channels))
        channels = list(in_channels)
        for level, inputs in self.nodes:
            for i in inputs:
                lateral = f"lateral_{i}_f{level}"
                if channels[i] != out_channels and not hasattr(self, lateral):
                    conv = Conv2d(channels[i], out_channels, 1, norm=get_norm(norm, out_channels))
                    self.add_module(lateral, conv)
            suffix = f"f{level}_{'_'.join(map(str, inputs))}"
            weights = nn.Parameter(torch.ones(len(inputs), dtype=torch.float32))
            self.register_parameter(f"weights_{suffix}", weights)
            self.add_module(
                f"outputs_{suffix}",
                Conv2d(
                    out_channels, out_channels, kernel_size=3, padding=1, bias=norm == "",
                    norm=get_norm(norm, out_channels),
                ),
            )
            channels.append(out_channels)
        # The last node of each level is that level's output.
        self.output_nodes = [
            max(k for k, (level, _) in enumerate(self.nodes) if level == lvl) + len(in_channels)
            for lvl in range(len(in_channels))
        ]

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == size:
            return x
        if h >= size[0] and w >= size[1]:
            # The finer neighbour. AdelaiDet needs both sides larger, so it raises where a side
            # is 1 at both levels (an image side <= 64 px); pooling it still gives the grid.
            if (-(-h // 2), -(-w // 2)) != size:
                raise ValueError(f"BiFPN: a level of size {(h, w)} is not 2x the next {size}")
            return max_pool_down(x)
        if h <= size[0] and w <= size[1]:
            return F.interpolate(x, size=size, mode="nearest")
        raise ValueError(f"BiFPN: levels of sizes {(h, w)} and {size} are not nested")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for level, inputs in self.nodes:
            size = tuple(feats[level].shape[-2:])
            suffix = f"f{level}_{'_'.join(map(str, inputs))}"
            weights = F.relu(getattr(self, f"weights_{suffix}"))
            weights = weights / (weights.sum() + FUSION_EPS)
            fused = None
            for w, i in zip(weights, inputs):
                x = feats[i]
                if x.shape[1] != self.out_channels:
                    x = getattr(self, f"lateral_{i}_f{level}")(x)
                x = w * self._resize(x, size)
                fused = x if fused is None else fused + x
            # Swish as x * sigmoid(x), AdelaiDet's rounding: F.silu differs in the last bits,
            # which moved the fusion weights' gradients by up to 3e-3 relative.
            feats.append(getattr(self, f"outputs_{suffix}")(fused * fused.sigmoid()))
        return [feats[k] for k in self.output_nodes]


class BiFPN(nn.Module):
    """ResNet + extra levels (:class:`ResNetWithTopLevels`) + ``num_repeats`` :class:`BiFPNLayer`.

    ``forward`` takes a normalised (N, 3, H, W) batch, H and W multiples of
    ``size_divisibility`` (the stride of the last of ``in_features``), and returns
    ``{"p3": (N, C, H/8, W/8), ..., "p7": (N, C, ceil(H/128), ceil(W/128))}`` (C =
    ``out_channels``, names ``p{level}`` of ``in_features`` and the extra levels).
    """

    # Module-name prefixes (tried in order) -> the config key choosing their norm.
    NORM_KEYS = {"bottom_up.backbone.": "MODEL.RESNETS.NORM", "": "MODEL.BiFPN.NORM"}

    def __init__(
        self,
        bottom_up: ResNet,
        in_features: list[str],
        out_channels: int,
        num_top_levels: int,
        num_repeats: int,
        norm: str = "",
    ):
        super().__init__()
        if num_repeats < 1:
            raise ValueError(f"BiFPN needs at least one repeat, got {num_repeats}")
        self.bottom_up = ResNetWithTopLevels(bottom_up, out_channels, num_top_levels, norm)
        shapes = self.bottom_up.output_shape()
        in_features = sorted(in_features, key=lambda name: _level(name)[1])
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"BiFPN in_features {missing} are not ResNet outputs {list(shapes)}")
        self.size_divisibility = shapes[in_features[-1]].stride
        prefix, last = _level(in_features[-1])
        in_features += [f"{prefix}{last + i}" for i in range(1, num_top_levels + 1)]
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"BiFPN levels {missing} above the last in_feature are not the extra levels "
                f"{self.bottom_up.top_names} (they follow the ResNet's last output "
                f"{self.bottom_up.last_feature})"
            )
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"BiFPN levels {in_features} need strides doubling: {strides}")
        self.in_features = in_features
        self._out_features = [f"p{_level(f)[1]}" for f in in_features]
        self._strides = dict(zip(self._out_features, strides))
        self.out_channels = out_channels
        in_channels = [shapes[f].channels for f in in_features]
        self.repeated_bifpn = nn.ModuleList()
        for _ in range(num_repeats):
            self.repeated_bifpn.append(BiFPNLayer(in_channels, out_channels, norm))
            in_channels = [out_channels] * len(in_features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_padded(x, self.size_divisibility, "BiFPN")
        outputs = self.bottom_up(x)
        feats = [outputs[f] for f in self.in_features]
        for layer in self.repeated_bifpn:
            feats = layer(feats)
        return dict(zip(self._out_features, feats))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self.out_channels, stride=self._strides[name])
            for name in self._out_features
        }


def check_bifpn_cfg(cfg: CfgNode, bad: Report) -> None:
    """The checks of the keys :func:`build_fcos_resnet_bifpn_backbone` reads on top of the
    ResNet's: ``MODEL.BiFPN`` and ``MODEL.FCOS.TOP_LEVELS``."""
    b = cfg.MODEL.BiFPN
    check_neck_cfg(cfg, bad, "MODEL.BiFPN")
    if not isinstance(b.NUM_REPEATS, int) or b.NUM_REPEATS < 1:
        bad("MODEL.BiFPN.NUM_REPEATS", "must be a positive integer")
    if cfg.MODEL.FCOS.TOP_LEVELS < 0:
        bad("MODEL.FCOS.TOP_LEVELS", "must be >= 0")
    if len(b.IN_FEATURES) + max(cfg.MODEL.FCOS.TOP_LEVELS, 0) < 2:
        bad("MODEL.BiFPN.IN_FEATURES", "a BiFPN needs at least 2 levels with the extra ones")


@register_backbone(check_bifpn_cfg, neck="MODEL.BiFPN")
def build_fcos_resnet_bifpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> BiFPN:
    """ResNet (``MODEL.RESNETS``) + ``MODEL.FCOS.TOP_LEVELS`` extra levels + BiFPN
    (``MODEL.BiFPN.IN_FEATURES``, ``OUT_CHANNELS``, ``NUM_REPEATS``, ``NORM``; checked by
    :func:`check_bifpn_cfg`)."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    b = cfg.MODEL.BiFPN
    return BiFPN(
        build_resnet_backbone(cfg, input_shape),
        list(b.IN_FEATURES),
        b.OUT_CHANNELS,
        num_top_levels=cfg.MODEL.FCOS.TOP_LEVELS,
        num_repeats=b.NUM_REPEATS,
        norm=b.NORM,
    )
