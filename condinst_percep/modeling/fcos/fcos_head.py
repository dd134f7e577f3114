"""FCOS head: classification / box / centerness towers shared across FPN levels (AdelaiDet)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import NaiveSyncBatchNorm, ShapeSpec

HEAD_NORMS = ("GN", "NaiveGN", "BN", "SyncBN", "none")


class Scale(nn.Module):
    """Multiplies its input by one learnable scalar ``scale`` (init ``init_value``)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ModuleListDial(nn.ModuleList):
    """Calls its modules in turn, one per call: a separate BatchNorm for each FPN level while
    the convolution weights are shared (AdelaiDet's ``ModuleListDial``)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__(modules)
        self.cur_position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self[self.cur_position](x)
        self.cur_position = (self.cur_position + 1) % len(self)
        return result


def _norm_layer(norm: str, channels: int, num_levels: int) -> nn.Module | None:
    if norm in ("GN", "NaiveGN"):
        # AdelaiDet's NaiveGroupNorm computes the same function with the same parameters.
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return ModuleListDial([nn.BatchNorm2d(channels) for _ in range(num_levels)])
    if norm == "SyncBN":
        return ModuleListDial([NaiveSyncBatchNorm(channels) for _ in range(num_levels)])
    return None


class FCOSHead(nn.Module):
    """Towers and predictors of FCOS, applied to every level with shared weights.

    Module names follow AdelaiDet (``cls_tower``, ``bbox_tower``, ``share_tower``,
    ``cls_logits``, ``bbox_pred``, ``ctrness``, ``scales``) so checkpoints load by name.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int,
        num_classes: int = 80,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        use_scale: bool = True,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"MODEL.FCOS.NORM must be one of {HEAD_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.in_channels_to_top_module = in_channels
        for name, num_convs in (
            ("cls", num_cls_convs),
            ("bbox", num_box_convs),
            ("share", num_share_convs),
        ):
            tower: list[nn.Module] = []
            for _ in range(num_convs):
                tower.append(nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1, bias=True))
                norm_layer = _norm_layer(norm, in_channels, num_levels)
                if norm_layer is not None:
                    tower.append(norm_layer)
                tower.append(nn.ReLU())
            self.add_module(f"{name}_tower", nn.Sequential(*tower))
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, stride=1, padding=1)
        self.scales = (
            nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None
        )
        for module in (
            self.cls_tower, self.bbox_tower, self.share_tower,
            self.cls_logits, self.bbox_pred, self.ctrness,
        ):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict:
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOS needs equal channels on all levels, got {sorted(channels)}")
        f = cfg.MODEL.FCOS
        if f.USE_DEFORMABLE:
            raise ValueError(
                "MODEL.FCOS.USE_DEFORMABLE = True: deformable convs are not implemented"
            )
        return dict(
            in_channels=channels.pop(),
            num_levels=len(input_shape),
            num_classes=f.NUM_CLASSES,
            num_cls_convs=f.NUM_CLS_CONVS,
            num_box_convs=f.NUM_BOX_CONVS,
            num_share_convs=f.NUM_SHARE_CONVS,
            norm=f.NORM,
            use_scale=f.USE_SCALE,
            prior_prob=f.PRIOR_PROB,
        )

    def forward(
        self, features: list[torch.Tensor], top_module: nn.Module | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per level ``l`` with features (N, C, H_l, W_l), returns lists over levels of

        - ``logits`` (N, num_classes, H_l, W_l) class logits,
        - ``bbox_reg`` (N, 4, H_l, W_l) ReLU'd (l, t, r, b) distances in units of the stride,
        - ``ctrness`` (N, 1, H_l, W_l) centerness logits (from the box tower),
        - ``top_feats`` (N, K, H_l, W_l) = ``top_module(bbox_tower)`` (CondInst's controller),
          empty if ``top_module`` is None.
        """
        logits, bbox_reg, ctrness, top_feats = [], [], [], []
        for level, feature in enumerate(features):
            feature = self.share_tower(feature)
            cls_tower = self.cls_tower(feature)
            bbox_tower = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            # ReLU as in the improved FCOS, not exp.
            bbox_reg.append(F.relu(reg))
            if top_module is not None:
                top_feats.append(top_module(bbox_tower))
        return logits, bbox_reg, ctrness, top_feats

    def top_feats(self, features: list[torch.Tensor], top_module: nn.Module) -> list[torch.Tensor]:
        """Only ``top_module(bbox_tower(share_tower(f)))`` per level (N, K, H_l, W_l): what a
        teacher needs from its own head, without the classification tower."""
        return [top_module(self.bbox_tower(self.share_tower(f))) for f in features]
