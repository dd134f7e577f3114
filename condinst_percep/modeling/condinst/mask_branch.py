"""CondInst mask branch: fuses P3-P5 into ``mask_feats`` at the stride of the first feature."""

from __future__ import annotations

import torch
from torch import nn

from ...config.validate import Report
from ...layers import ShapeSpec, aligned_bilinear, check_norm_cfg, get_norm
from ..backbone import backbone_output_names


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
    ``out_channels``). Output ``mask_feats`` (N, out_channels, Hp/out_stride, Wp/out_stride)."""

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
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.out_stride = in_strides[0]
        self.refine = nn.ModuleList(conv_block(c, channels, norm) for c in in_channels)
        tower: list[nn.Module] = [conv_block(channels, channels, norm) for _ in range(num_convs)]
        tower.append(nn.Conv2d(channels, out_channels, 1))
        self.tower = nn.Sequential(*tower)

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The checks of ``MODEL.CONDINST.MASK_BRANCH`` (see ``collect_problems``)."""
        mb = cfg.MODEL.CONDINST.MASK_BRANCH
        if mb.SEMANTIC_LOSS_ON:
            bad(
                "MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON",
                "the auxiliary semantic loss of the '_sem' models is not implemented "
                "(their checkpoints still load: the extra keys are skipped)",
            )
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
        mb = cfg.MODEL.CONDINST.MASK_BRANCH
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
