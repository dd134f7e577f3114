from .fcos import FCOS
from .fcos_head import FCOSHead, Scale
from .fcos_outputs import FCOSOutputs, compute_ctrness_targets
from .fcos_targets import compute_locations, compute_targets, flatten_predictions, mask_centroids

__all__ = [
    "FCOS",
    "FCOSHead",
    "FCOSOutputs",
    "Scale",
    "compute_ctrness_targets",
    "compute_locations",
    "compute_targets",
    "flatten_predictions",
    "mask_centroids",
]
