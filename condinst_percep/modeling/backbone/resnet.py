"""ResNet-18/34/50/101/152 with detectron2's module names, initialisation and freezing.

Names: ``stem.conv1``, ``res{2..5}.{block}.{conv1,conv2,conv3,shortcut}``, each conv a
:class:`~condinst_percep.layers.Conv2d` whose normalisation child is ``norm``. Stage strides
4 (stem), 4, 8, 16, 32.
"""
from __future__ import annotations

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn import functional as F

from ...config.validate import Report, check_choice
from ...layers import (
    Conv2d,
    FrozenBatchNorm2d,
    ShapeSpec,
    c2_msra_fill,
    check_norm_cfg,
    get_norm,
)

STAGE_NAMES = ["res2", "res3", "res4", "res5"]
NUM_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class CNNBlockBase(nn.Module):
    """A block with known input/output channels and stride that can be frozen."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """No gradients for any parameter; BatchNorm layers become FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: str,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2d:
    """A bias-free conv with "same" padding and a ``norm`` child, MSRA-initialised."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    c2_msra_fill(conv)
    return conv


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    if in_channels == out_channels:
        return None
    return conv_norm(in_channels, out_channels, 1, norm, stride=stride)


class BasicBlock(CNNBlockBase):
    """Two 3×3 convs (ResNet-18/34); the stride is in the first."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = conv_norm(in_channels, out_channels, 3, norm, stride=stride)
        self.conv2 = conv_norm(out_channels, out_channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """1×1 → 3×3 (grouped) → 1×1 (ResNet-50+). ``stride_in_1x1`` puts the stride in the first
    1×1 conv (MSRA/Caffe2 weights) instead of the 3×3 conv (torchvision weights)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv_norm(in_channels, bottleneck_channels, 1, norm, stride=stride_1x1)
        self.conv2 = conv_norm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            norm,
            stride=stride_3x3,
            dilation=dilation,
            groups=num_groups,
        )
        self.conv3 = conv_norm(bottleneck_channels, out_channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """7×7 stride-2 conv, ReLU, 3×3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = conv_norm(in_channels, out_channels, 7, norm, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Stem plus ``len(stages)`` stages named ``res2``, ``res3``, ...

    ``forward`` takes (N, C, H, W) float and returns ``{name: (N, C_name, H/s, W/s)}`` for the
    names in ``out_features`` (any of "stem", "res2".."res5").
    """

    def __init__(
        self,
        stem: BasicStem,
        stages: list[list[CNNBlockBase]],
        out_features: list[str],
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        names = STAGE_NAMES[: len(stages)]
        if not out_features or any(f not in ["stem"] + names for f in out_features):
            raise ValueError(f"ResNet out_features {out_features} must be among stem, {names}")
        self._out_feature_strides = {"stem": stem.stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        self.stage_names: list[str] = []
        self.stages: list[nn.Sequential] = []
        stride = stem.stride
        for name, blocks in zip(names, stages):
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for block in blocks:
                stride *= block.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the stem (``freeze_at`` >= 1) and stages res2.. res{freeze_at} (>= 2)."""
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage:
                    block.freeze()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.stem.in_channels:
            raise ValueError(
                f"ResNet takes (N, {self.stem.in_channels}, H, W) images, got {tuple(x.shape)}"
            )
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }


def check_resnet_cfg(cfg: CfgNode, bad: Report) -> None:
    """The checks of ``MODEL.RESNETS`` and ``MODEL.BACKBONE.FREEZE_AT`` (see
    ``collect_problems``)."""
    r = cfg.MODEL.RESNETS
    check_choice(cfg, bad, "MODEL.RESNETS.DEPTH", NUM_BLOCKS_PER_STAGE)
    check_choice(
        cfg, bad, "MODEL.RESNETS.RES5_DILATION", (1,),
        "a dilated res5 breaks the FPN strides CondInst relies on",
    )
    if cfg.MODEL.BACKBONE.ANTI_ALIAS:
        bad("MODEL.BACKBONE.ANTI_ALIAS", "the anti-aliased (blur-pool) ResNet is not implemented")
    if r.DEFORM_MODULATED:
        bad("MODEL.RESNETS.DEFORM_MODULATED", "deformable convolutions are not implemented")
    if any(r.DEFORM_ON_PER_STAGE):
        bad("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "deformable convolutions are not implemented")
    if r.DEFORM_INTERVAL != 1:
        bad("MODEL.RESNETS.DEFORM_INTERVAL", "AdelaiDet's interval ResNet is not implemented")
    if not 0 <= cfg.MODEL.BACKBONE.FREEZE_AT <= 5:
        bad("MODEL.BACKBONE.FREEZE_AT", "must be in 0..5 (0 = train all, 5 = freeze res5 too)")
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "NUM_GROUPS", "WIDTH_PER_GROUP"):
        if r[key] < 1:
            bad(f"MODEL.RESNETS.{key}", "must be a positive integer")
    if r.DEPTH in (18, 34) and (r.NUM_GROUPS != 1 or r.WIDTH_PER_GROUP != 64):
        bad("MODEL.RESNETS.NUM_GROUPS", "ResNet-18/34 have no grouped convs (needs 1 and 64)")
    unknown = [f for f in r.OUT_FEATURES if f not in ["stem"] + STAGE_NAMES]
    if unknown:
        bad("MODEL.RESNETS.OUT_FEATURES", f"has unknown names {unknown}")
    widths = [r.STEM_OUT_CHANNELS] + [r.RES2_OUT_CHANNELS * 2**i for i in range(4)]
    if r.DEPTH >= 50:
        widths += [r.NUM_GROUPS * r.WIDTH_PER_GROUP * 2**i for i in range(4)]
    check_norm_cfg(cfg, bad, "MODEL.RESNETS.NORM", widths, optional=False)


def build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.BACKBONE.FREEZE_AT`` (checked by
    :func:`check_resnet_cfg`).

    Unlike detectron2, ResNet-18/34 accept any ``RES2_OUT_CHANNELS``/``STEM_OUT_CHANNELS``, so
    tiny models can be built for CPU experiments.
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    norm = r.NORM
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm)
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    # Like detectron2, stages after the last requested output are not built.
    num_stages = max((STAGE_NAMES.index(f) + 1 for f in r.OUT_FEATURES if f != "stem"), default=0)
    stages = []
    for idx, num_blocks in enumerate(NUM_BLOCKS_PER_STAGE[depth][:num_stages]):
        blocks: list[CNNBlockBase] = []
        for b in range(num_blocks):
            stride = 2 if idx > 0 and b == 0 else 1
            if depth in (18, 34):
                block = BasicBlock(in_channels, out_channels, stride=stride, norm=norm)
            else:
                block = BottleneckBlock(
                    in_channels,
                    out_channels,
                    bottleneck_channels=bottleneck_channels,
                    stride=stride,
                    num_groups=r.NUM_GROUPS,
                    norm=norm,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                )
            blocks.append(block)
            in_channels = out_channels
        stages.append(blocks)
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(
        stem, stages, out_features=list(r.OUT_FEATURES), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )
