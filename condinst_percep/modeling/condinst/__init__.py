from .condinst import CondInst
from .dynamic_mask_head import (
    MASK_HEAD_REGISTRY,
    DynamicMaskHead,
    build_mask_head,
    parse_dynamic_params,
)
from .mask_branch import MaskBranch
from .percep_mask_head import PercepMaskHead

__all__ = [
    "MASK_HEAD_REGISTRY",
    "CondInst",
    "DynamicMaskHead",
    "MaskBranch",
    "PercepMaskHead",
    "build_mask_head",
    "parse_dynamic_params",
]
