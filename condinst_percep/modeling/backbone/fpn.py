"""FPN on a ResNet with FCOS's extra levels P6/P7 computed from P5 (AdelaiDet's backbone).

Module names follow detectron2/AdelaiDet: ``fpn_lateral{s}``/``fpn_output{s}`` with
``s = log2(stride)``, ``top_block.p6``/``top_block.p7``, ``bottom_up`` (the ResNet). They are
registered in that order, so ``state_dict()`` lists keys in AdelaiDet's order.
"""
from __future__ import annotations

import math

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn import functional as F

from ...config.validate import Report, check_choice
from ...layers import Conv2d, ShapeSpec, c2_xavier_fill, get_norm
from .build import check_neck_cfg, check_padded, register_backbone
from .resnet import build_resnet_backbone

FUSE_TYPES = ("sum", "avg")


class LastLevelP6P7(nn.Module):
    """P6 = conv3×3/2(P5); P7 = conv3×3/2(ReLU(P6)). Both convs have biases."""

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class LastLevelP6(nn.Module):
    """P6 = conv3×3/2(P5) (``MODEL.FCOS.TOP_LEVELS: 1``)."""

    num_levels = 1

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        c2_xavier_fill(self.p6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.p6(x)]


class FPN(nn.Module):
    """Feature pyramid over ``bottom_up``'s ``in_features`` plus an optional ``top_block``.

    ``forward`` takes a normalised image batch (N, 3, H, W) float, H and W multiples of
    ``size_divisibility``, and returns ``{"p3": (N, C, H/8, W/8), ..., "p7": (N, C, H/128,
    W/128)}`` (names ``p{log2 stride}``, C = ``out_channels``, the input dtype).
    """

    # Module-name prefixes (tried in order) -> the config key choosing their norm.
    NORM_KEYS = {"bottom_up.": "MODEL.RESNETS.NORM", "": "MODEL.FPN.NORM"}

    def __init__(
        self,
        bottom_up: nn.Module,
        in_features: list[str],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
    ):
        super().__init__()
        if fuse_type not in FUSE_TYPES:
            raise ValueError(f"FPN fuse_type must be one of {FUSE_TYPES}, got {fuse_type!r}")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not outputs of the bottom-up network")
        strides = [input_shapes[f].stride for f in in_features]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise ValueError(f"FPN in_features need strides doubling level to level: {strides}")
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for f, stride in zip(in_features, strides):
            lateral = Conv2d(
                input_shapes[f].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            stage = int(math.log2(stride))
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Top-down order (coarsest first), as the forward pass walks them.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            if top_block.in_feature not in self._out_feature_strides:
                raise ValueError(
                    f"top block input {top_block.in_feature!r} is not an FPN output "
                    f"{list(self._out_feature_strides)}"
                )
            for s in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{s}"] = 2**s
        self._out_features = list(self._out_feature_strides)
        self.out_channels = out_channels
        self._fuse_type = fuse_type
        self.size_divisibility = strides[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_padded(x, self.size_divisibility, "FPN")
        bottom_up = self.bottom_up(x)
        prev = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        results = [self.output_convs[0](prev)]
        for idx in range(1, len(self.in_features)):
            lateral = self.lateral_convs[idx](bottom_up[self.in_features[-idx - 1]])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, self.output_convs[idx](prev))
        if self.top_block is not None:
            top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        return dict(zip(self._out_features, results))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self.out_channels, stride=self._out_feature_strides[name])
            for name in self._out_features
        }


# FCOS.TOP_LEVELS -> the block computing the extra levels from P5.
_TOP_BLOCKS = {0: None, 1: LastLevelP6, 2: LastLevelP6P7}


def check_fpn_cfg(cfg: CfgNode, bad: Report) -> None:
    """The checks of the keys :func:`build_fcos_resnet_fpn_backbone` reads on top of the
    ResNet's: ``MODEL.FPN`` and ``MODEL.FCOS.TOP_LEVELS``."""
    check_neck_cfg(cfg, bad, "MODEL.FPN")
    check_choice(cfg, bad, "MODEL.FPN.FUSE_TYPE", FUSE_TYPES)
    check_choice(cfg, bad, "MODEL.FCOS.TOP_LEVELS", _TOP_BLOCKS)


@register_backbone(check_fpn_cfg, neck="MODEL.FPN")
def build_fcos_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FPN:
    """AdelaiDet's ``build_fcos_resnet_fpn_backbone``: ResNet + FPN + ``FCOS.TOP_LEVELS`` extra
    levels from P5 (keys checked by ``check_resnet_cfg`` and :func:`check_fpn_cfg`). ``input_shape``
    defaults to ``len(MODEL.PIXEL_MEAN)`` channels."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_levels = cfg.MODEL.FCOS.TOP_LEVELS
    top_block = (
        _TOP_BLOCKS[top_levels](out_channels, out_channels, "p5") if top_levels else None
    )
    return FPN(
        bottom_up,
        list(cfg.MODEL.FPN.IN_FEATURES),
        out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
