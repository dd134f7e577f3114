"""CondInst mask branch: fuses P3-P5 into ``mask_feats`` at the stride of the first feature,
optionally with the auxiliary semantic head of AdelaiDet's ``_sem`` models."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...config.validate import Report
from ...layers import ShapeSpec, aligned_bilinear, check_norm_cfg, get_norm
from ...structures import Instances
from ..backbone import backbone_output_names
from .semantic_loss import semantic_focal_loss, semantic_targets


def conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (kaiming-uniform a=1) + norm + ReLU, as AdelaiDet's
    ``conv_with_kaiming_uniform(norm, activation=True)``.

    Quirk kept for checkpoint compatibility: the conv has a bias only when ``norm`` is None in
    AdelaiDet, so ``norm == ""`` gives a bias-free conv without a norm layer.
    """
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    layers: list[nn.Module] = [conv]
    norm_layer = get_norm(norm, out_channels)
    if norm_layer is not None:
        layers.append(norm_layer)
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MaskBranch(nn.Module):
    """``refine`` (one conv block per input feature), sum after ``aligned_bilinear`` upsampling
    to the first feature's resolution, then ``tower`` (``num_convs`` blocks + a 1x1 conv to
    ``out_channels``). Output ``mask_feats`` (N, out_channels, Hp/out_stride, Wp/out_stride).

    With ``num_semantic_classes`` > 0 (``SEMANTIC_LOSS_ON``) it also has ``seg_head`` (two conv
    blocks on the first input feature) and ``logits`` (1x1 conv to one channel per class, bias
    at the focal-loss prior), trained by :meth:`losses`; they are not used at inference.
    """

    def __init__(
        self,
        *,
        in_features: list[str],
        in_channels: list[int],
        in_strides: list[int],
        out_channels: int = 8,
        channels: int = 128,
        num_convs: int = 4,
        norm: str = "BN",
        num_semantic_classes: int = 0,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.out_stride = in_strides[0]
        self.refine = nn.ModuleList(conv_block(c, channels, norm) for c in in_channels)
        tower: list[nn.Module] = [conv_block(channels, channels, norm) for _ in range(num_convs)]
        tower.append(nn.Conv2d(channels, out_channels, 1))
        self.tower = nn.Sequential(*tower)
        self.semantic_loss_on = num_semantic_classes > 0
        if self.semantic_loss_on:
            self.focal_loss_alpha = focal_loss_alpha
            self.focal_loss_gamma = focal_loss_gamma
            self.seg_head = nn.Sequential(
                conv_block(in_channels[0], channels, norm), conv_block(channels, channels, norm)
            )
            self.logits = nn.Conv2d(channels, num_semantic_classes, 1)
            nn.init.constant_(self.logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The checks of ``MODEL.CONDINST.MASK_BRANCH`` (see ``collect_problems``)."""
        mb = cfg.MODEL.CONDINST.MASK_BRANCH
        outputs = backbone_output_names(cfg)
        if not mb.IN_FEATURES or any(x not in outputs for x in mb.IN_FEATURES):
            bad(
                "MODEL.CONDINST.MASK_BRANCH.IN_FEATURES",
                f"must be a non-empty subset of the backbone outputs {outputs}",
            )
        for key in ("OUT_CHANNELS", "CHANNELS"):
            if mb[key] < 1:
                bad(f"MODEL.CONDINST.MASK_BRANCH.{key}", "must be a positive integer")
        if mb.NUM_CONVS < 0:
            bad("MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", "must be >= 0")
        check_norm_cfg(cfg, bad, "MODEL.CONDINST.MASK_BRANCH.NORM", [mb.CHANNELS])

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        mb, fcos = cfg.MODEL.CONDINST.MASK_BRANCH, cfg.MODEL.FCOS
        missing = [f for f in mb.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES = {list(mb.IN_FEATURES)}: the backbone "
                f"has no {missing} (it gives {sorted(input_shape)})"
            )
        return dict(
            in_features=list(mb.IN_FEATURES),
            in_channels=[input_shape[f].channels for f in mb.IN_FEATURES],
            in_strides=[input_shape[f].stride for f in mb.IN_FEATURES],
            out_channels=mb.OUT_CHANNELS,
            channels=mb.CHANNELS,
            num_convs=mb.NUM_CONVS,
            norm=mb.NORM,
            num_semantic_classes=fcos.NUM_CLASSES if mb.SEMANTIC_LOSS_ON else 0,
            focal_loss_alpha=fcos.LOSS_ALPHA,
            focal_loss_gamma=fcos.LOSS_GAMMA,
            prior_prob=fcos.PRIOR_PROB,
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``features[name]`` (N, C, H, W) -> ``mask_feats`` (N, out_channels, H_0, W_0)."""
        x = self.refine[0](features[self.in_features[0]])
        for refine, name in zip(self.refine[1:], self.in_features[1:]):
            x_p = refine(features[name])
            factor = x.shape[2] // x_p.shape[2]
            if (x_p.shape[2] * factor, x_p.shape[3] * factor) != tuple(x.shape[2:]):
                raise ValueError(
                    f"mask branch: feature '{name}' {tuple(x_p.shape[2:])} is not an integer, "
                    f"square downscaling of {tuple(x.shape[2:])}; pad images to the backbone's "
                    "size_divisibility"
                )
            x = x + aligned_bilinear(x_p, factor)
        return self.tower(x)

    def losses(
        self,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances],
        padded_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """``{"loss_sem": float32 scalar}`` with the semantic head, else ``{}``.

        The logits (N, C, Hp/s, Wp/s), s the first input feature's stride and (Hp, Wp)
        ``padded_size`` (the batch's), are compared with
        :func:`semantic_targets` of each image's ``gt_masks`` bool (G, H, W) and ``gt_classes``
        by :func:`semantic_focal_loss` (``MODEL.FCOS.LOSS_ALPHA``/``LOSS_GAMMA``).
        """
        if not self.semantic_loss_on:
            return {}
        logits = self.logits(self.seg_head(features[self.in_features[0]]))
        targets = semantic_targets(
            [gt.gt_masks for gt in gt_instances],
            [gt.gt_classes for gt in gt_instances],
            tuple(padded_size),
            self.out_stride,
        )
        loss = semantic_focal_loss(logits, targets, self.focal_loss_alpha, self.focal_loss_gamma)
        return {"loss_sem": loss}
