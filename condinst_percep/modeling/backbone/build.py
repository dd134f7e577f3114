"""The backbone registry: ``MODEL.BACKBONE.NAME`` picks a builder ``fn(cfg, input_shape)``, and
with it the check of the keys it reads and the config node of its pyramid (its "neck")."""
from __future__ import annotations

from collections.abc import Callable

import torch
from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...config.config import lookup
from ...config.validate import Check, Report, check_choice
from ...layers import ShapeSpec, check_norm_cfg
from .resnet import STAGE_NAMES, check_resnet_cfg

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """Backbone builders ``fn(cfg, input_shape: ShapeSpec | None)``,
registered with :func:`register_backbone`.

Each returns a module whose forward maps a normalised, padded (N, 3, H, W) batch to
``{"p3": ..., "p7": ...}``, with ``output_shape()``, ``size_divisibility`` and ``NORM_KEYS``
(module-name prefixes -> the config key that chose their norm, for error messages).
"""


def register_backbone(check_cfg: Check, neck: str) -> Callable:
    """Registers the decorated builder under its name with ``check_cfg(cfg, bad)``, the check of
    the keys it reads besides the ResNet's, and ``neck``, the config node (``"MODEL.FPN"``)
    whose ``IN_FEATURES`` and ``OUT_CHANNELS`` give its outputs' names and width."""

    def register(builder: Callable) -> Callable:
        builder.check_cfg = check_cfg
        builder.neck = neck
        BACKBONE_REGISTRY.register(builder)
        return builder

    return register


def _registered() -> list[str]:
    return sorted(name for name, _ in BACKBONE_REGISTRY)


def check_backbone_cfg(cfg: CfgNode, bad: Report) -> None:
    """``MODEL.BACKBONE.NAME`` (a registered builder), the ResNet's keys (the bottom-up network
    of every backbone here) and the keys of the backbone ``NAME`` names."""
    if cfg.MODEL.MOBILENET:
        bad("MODEL.MOBILENET", "the MobileNetV2 backbone is not implemented")
    name = cfg.MODEL.BACKBONE.NAME
    check_choice(cfg, bad, "MODEL.BACKBONE.NAME", _registered(), "not a registered backbone")
    check_resnet_cfg(cfg, bad)
    if name in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.get(name).check_cfg(cfg, bad)


def check_neck_cfg(cfg: CfgNode, bad: Report, neck: str) -> None:
    """The keys every pyramid on the ResNet reads from its node ``neck`` (``"MODEL.FPN"``):
    ``IN_FEATURES`` consecutive ResNet outputs ending at res5 when ``FCOS.TOP_LEVELS`` extra
    levels follow it, a positive ``OUT_CHANNELS``, and ``NORM``."""
    node = lookup(cfg, neck)
    check_norm_cfg(cfg, bad, f"{neck}.NORM", [node.OUT_CHANNELS])
    stages, in_features = STAGE_NAMES, list(node.IN_FEATURES)
    if not in_features or any(f not in stages for f in in_features):
        bad(f"{neck}.IN_FEATURES", f"must be consecutive entries of {stages}")
    elif in_features != stages[stages.index(in_features[0]) :][: len(in_features)]:
        bad(f"{neck}.IN_FEATURES", f"must be consecutive entries of {stages}, in order")
    missing = [f for f in in_features if f not in cfg.MODEL.RESNETS.OUT_FEATURES]
    if missing:
        bad("MODEL.RESNETS.OUT_FEATURES", f"lacks {missing}, which {neck}.IN_FEATURES uses")
    if node.OUT_CHANNELS < 1:
        bad(f"{neck}.OUT_CHANNELS", "must be a positive integer")
    if cfg.MODEL.FCOS.TOP_LEVELS and in_features and in_features[-1] != "res5":
        short = neck.removeprefix("MODEL.")
        bad("MODEL.FCOS.TOP_LEVELS", f"P6/P7 are computed from P5, so {short}.IN_FEATURES needs res5")


def neck_key(cfg: CfgNode) -> str:
    """The config node of the backbone's pyramid, ``"MODEL.FPN"`` or ``"MODEL.BiFPN"``. An
    unregistered ``NAME`` (reported by :func:`check_backbone_cfg`) reads ``"MODEL.FPN"``, so
    the other checks still run."""
    name = cfg.MODEL.BACKBONE.NAME
    return BACKBONE_REGISTRY.get(name).neck if name in BACKBONE_REGISTRY else "MODEL.FPN"


def backbone_output_names(cfg: CfgNode) -> list[str]:
    """Names of the backbone's outputs ("p3".."p7" for the defaults) implied by the config:
    ``p{level}`` of the neck's ``IN_FEATURES``, then ``FCOS.TOP_LEVELS`` more."""
    in_features = lookup(cfg, f"{neck_key(cfg)}.IN_FEATURES")
    names = [f"p{f[3:]}" for f in in_features if f.startswith("res") and f[3:].isdigit()]
    last = int(names[-1][1:]) if names else 5
    return names + [f"p{last + i + 1}" for i in range(cfg.MODEL.FCOS.TOP_LEVELS)]


def backbone_out_channels(cfg: CfgNode) -> tuple[str, int]:
    """(key, value) of the config key that sets the width of every backbone output."""
    key = f"{neck_key(cfg)}.OUT_CHANNELS"
    return key, lookup(cfg, key)


def build_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> nn.Module:
    """The backbone registered under ``cfg.MODEL.BACKBONE.NAME`` (its keys are checked by
    :func:`check_backbone_cfg`, which ``build_model`` runs)."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONE_REGISTRY:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {name!r} is not implemented; available: {_registered()}"
        )
    return BACKBONE_REGISTRY.get(name)(cfg, input_shape)


def check_padded(x: torch.Tensor, size_divisibility: int, name: str) -> None:
    """Raise ValueError unless the (N, C, H, W) batch ``x`` has H and W multiples of
    ``size_divisibility``, which the pyramid's level sizes rely on."""
    d = size_divisibility
    if x.dim() == 4 and (x.shape[-2] % d or x.shape[-1] % d):
        raise ValueError(
            f"{name} input size {tuple(x.shape[-2:])} must be padded to multiples of {d}"
        )
