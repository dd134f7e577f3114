"""The backbone registry: ``MODEL.BACKBONE.NAME`` picks a builder ``fn(cfg, input_shape)``."""
from __future__ import annotations

import torch
from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...layers import ShapeSpec

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """Backbone builders ``fn(cfg, input_shape: ShapeSpec | None)``.

Each returns a module whose forward maps a normalised, padded (N, 3, H, W) batch to named
feature maps, with ``output_shape()``, ``size_divisibility`` and ``NORM_KEYS`` (module-name
prefixes -> the config key that chose their norm, for error messages).
"""


def build_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> nn.Module:
    """The backbone registered under ``cfg.MODEL.BACKBONE.NAME``."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONE_REGISTRY:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {name!r} is not implemented; available: "
            f"{sorted(k for k, _ in BACKBONE_REGISTRY)}"
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
