"""FCOS proposal generator (AdelaiDet ``FCOS``): the head plus its targets/losses/inference."""

from __future__ import annotations

import torch
from torch import nn

from ...config.validate import Report, check_choice
from ...layers import ShapeSpec
from ...layers.losses import LOC_LOSS_TYPES
from ...structures import Instances
from ..backbone import backbone_out_channels, backbone_output_names
from .fcos_head import HEAD_NORMS, FCOSHead
from .fcos_outputs import BOX_QUALITIES, LOSS_NORMALIZERS, FCOSOutputs
from .fcos_targets import compute_locations, flatten_predictions

_TOPK_KEYS = (
    "PRE_NMS_TOPK_TRAIN", "PRE_NMS_TOPK_TEST", "POST_NMS_TOPK_TRAIN", "POST_NMS_TOPK_TEST"
)


class FCOS(nn.Module):
    """Children ``fcos_head`` (parameters) and ``fcos_outputs`` (none), as in AdelaiDet."""

    def __init__(self, *, in_features: list[str], fpn_strides: list[int], fcos_head: FCOSHead,
                 fcos_outputs: FCOSOutputs):
        super().__init__()
        self.in_features = list(in_features)
        self.fpn_strides = list(fpn_strides)
        self.fcos_head = fcos_head
        self.fcos_outputs = fcos_outputs
        self.in_channels_to_top_module = fcos_head.in_channels_to_top_module

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The checks of ``MODEL.FCOS`` (see ``collect_problems``); the head's, the targets'
        and the losses' keys included."""
        f = cfg.MODEL.FCOS
        check_choice(cfg, bad, "MODEL.FCOS.NORM", HEAD_NORMS)
        check_choice(cfg, bad, "MODEL.FCOS.BOX_QUALITY", BOX_QUALITIES)
        check_choice(cfg, bad, "MODEL.FCOS.LOSS_NORMALIZER_CLS", LOSS_NORMALIZERS)
        check_choice(cfg, bad, "MODEL.FCOS.LOC_LOSS_TYPE", LOC_LOSS_TYPES)
        check_choice(
            cfg, bad, "MODEL.FCOS.USE_RELU", (True,), "AdelaiDet ignores it and always applies ReLU"
        )
        check_choice(cfg, bad, "MODEL.FCOS.YIELD_PROPOSAL", (False,))
        check_choice(cfg, bad, "MODEL.FCOS.YIELD_BOX_FEATURES", (False,))
        if f.USE_DEFORMABLE:
            bad("MODEL.FCOS.USE_DEFORMABLE", "deformable convolutions are not implemented")
        outputs = backbone_output_names(cfg)
        if not f.IN_FEATURES or any(x not in outputs for x in f.IN_FEATURES):
            bad(
                "MODEL.FCOS.IN_FEATURES",
                f"must be a non-empty subset of the backbone outputs {outputs}",
            )
        expected_strides = [2 ** int(x[1:]) for x in f.IN_FEATURES if x[1:].isdigit()]
        if list(f.FPN_STRIDES) != expected_strides:
            bad("MODEL.FCOS.FPN_STRIDES", f"must be FCOS.IN_FEATURES' strides {expected_strides}")
        soi = list(f.SIZES_OF_INTEREST)
        if len(soi) != len(f.IN_FEATURES) - 1 or soi != sorted(set(soi)) or (soi and soi[0] <= 0):
            bad(
                "MODEL.FCOS.SIZES_OF_INTEREST",
                "needs len(FCOS.IN_FEATURES) - 1 positive, strictly increasing values",
            )
        if f.NUM_CLASSES < 1:
            bad("MODEL.FCOS.NUM_CLASSES", "must be a positive integer")
        if not 0.0 < f.PRIOR_PROB < 1.0:
            bad("MODEL.FCOS.PRIOR_PROB", "must lie in (0, 1)")
        for key in ("INFERENCE_TH_TRAIN", "INFERENCE_TH_TEST", "NMS_TH", "LOSS_ALPHA"):
            if not 0.0 <= f[key] <= 1.0:
                bad(f"MODEL.FCOS.{key}", "must lie in [0, 1]")
        for key in _TOPK_KEYS:
            if f[key] < 1:
                bad(f"MODEL.FCOS.{key}", "must be a positive integer")
        for key in ("NUM_CLS_CONVS", "NUM_BOX_CONVS", "NUM_SHARE_CONVS"):
            if f[key] < 0:
                bad(f"MODEL.FCOS.{key}", "must be >= 0")
        if f.LOSS_GAMMA < 0 or f.LOSS_WEIGHT_CLS < 0 or f.POS_RADIUS <= 0:
            bad("MODEL.FCOS.LOSS_GAMMA", "LOSS_GAMMA, LOSS_WEIGHT_CLS must be >= 0, POS_RADIUS > 0")
        channels_key, channels = backbone_out_channels(cfg)
        if f.NORM in ("GN", "NaiveGN") and channels % 32:
            bad("MODEL.FCOS.NORM", f"GN uses 32 groups: {channels_key} must divide by 32")
        elif f.NORM in ("GN", "NaiveGN") and channels == 32 and expected_strides:
            # One channel per group: on a 1x1 map (an image padded to the top stride) a group
            # holds a single value, which GroupNorm refuses at batch 1 and maps to its bias
            # otherwise.
            top = max(expected_strides)
            smallest = min([*cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST])
            if smallest <= top:
                bad(
                    channels_key,
                    f"with MODEL.FCOS.NORM {f.NORM!r} (32 groups) leaves one channel per group, "
                    f"and images resized to {smallest} px (INPUT.MIN_SIZE_TRAIN/TEST; 0 = not "
                    f"resized) can have a 1x1 map at stride {top}, where each group normalises a "
                    f"single value (torch raises at batch 1, the output is only the bias "
                    f"otherwise); use 64+ channels or a minimum size above {top}",
                )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        in_features = list(cfg.MODEL.FCOS.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES = {in_features}: the backbone has no {missing} "
                f"(it gives {sorted(input_shape)})"
            )
        shapes = [input_shape[f] for f in in_features]
        return dict(
            in_features=in_features,
            fpn_strides=list(cfg.MODEL.FCOS.FPN_STRIDES),
            fcos_head=FCOSHead(**FCOSHead.from_config(cfg, shapes)),
            fcos_outputs=FCOSOutputs(**FCOSOutputs.from_config(cfg)),
        )

    def grid_sizes(self, padded_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(H_l, W_l) of every level for a batch padded to ``padded_size`` (Hp, Wp):
        ``(ceil(Hp / stride), ceil(Wp / stride))``, what stride-2 convolutions with "same"
        padding give. Known on the host, so two models can agree on their grid without
        comparing device values."""
        h, w = padded_size
        return [(-(-h // s), -(-w // s)) for s in self.fpn_strides]

    def check_grid(self, features: dict[str, torch.Tensor], padded_size: tuple[int, int]) -> None:
        """Raise ValueError unless every level's feature map has :meth:`grid_sizes`'s size.

        Locations (and the ``pos_inds`` indexing them) are then a function of the padded size
        and the strides alone, so a teacher run on the student's batch with the same strides
        has the student's grid (see ``CondInst.mask_logits_on``).
        """
        expected = self.grid_sizes(padded_size)
        bad = [
            f"{f} is {tuple(features[f].shape[-2:])}, expected {e}"
            for f, e in zip(self.in_features, expected)
            if tuple(features[f].shape[-2:]) != e
        ]
        if bad:
            raise ValueError(
                f"FCOS levels for the padded batch {tuple(padded_size)} with FPN_STRIDES "
                f"{self.fpn_strides}: {'; '.join(bad)} (ceil(size / stride)). The locations, "
                "and a teacher's reading of the student's pos_inds, need a backbone that halves "
                "the resolution level to level with 'same' padding"
            )

    def compute_locations(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            compute_locations(f.shape[-2], f.shape[-1], stride, f.device)
            for f, stride in zip(features, self.fpn_strides)
        ]

    def forward(
        self,
        image_sizes: list[tuple[int, int]],
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances] | None = None,
        top_module: nn.Module | None = None,
    ):
        """Training: returns ``(extras, losses)`` (see ``FCOSOutputs.losses``).
        Inference: returns ``(detections per image, {})`` (see ``FCOSOutputs.predict_proposals``).

        ``image_sizes`` are the un-padded network input sizes (h, w) of the images.
        """
        features = [features[f] for f in self.in_features]
        locations = self.compute_locations(features)
        logits, reg, ctrness, top_feats = self.fcos_head(features, top_module)
        if self.training:
            return self.fcos_outputs.losses(
                logits, reg, ctrness, locations, gt_instances, top_feats
            )
        detections = self.fcos_outputs.predict_proposals(
            logits, reg, ctrness, locations, image_sizes, top_feats
        )
        return detections, {}

    def flat_top_feats(
        self, features: dict[str, torch.Tensor], top_module: nn.Module
    ) -> torch.Tensor:
        """``top_module`` outputs at every location, (P_all, K), flattened level-major exactly
        like the training targets, so the student's ``pos_inds`` index them (teacher use)."""
        return flatten_predictions(
            self.fcos_head.top_feats([features[f] for f in self.in_features], top_module)
        )
