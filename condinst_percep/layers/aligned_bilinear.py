"""AdelaiDet's ``aligned_bilinear`` upsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aligned_bilinear(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsamples ``(N, C, h, w)`` to ``(N, C, factor*h, factor*w)`` so that output pixel ``j``
    samples input coordinate ``(j - factor//2) / factor`` (clamped to the border).

    This places the output grid consistently with strided sampling of a higher-resolution map
    at offset ``factor // 2``. Steps: replicate-pad one pixel at the right/bottom, bilinear
    interpolation with ``align_corners=True`` to ``(f*h + 1, f*w + 1)`` (input pixel ``i`` lands
    on output pixel ``f*i``), replicate-pad ``f//2`` at the left/top, drop the last row/column.
    ``factor == 1`` returns the input itself.
    """
    if tensor.dim() != 4:
        raise ValueError(f"aligned_bilinear expects (N, C, H, W), got shape {tuple(tensor.shape)}")
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear: factor must be a positive integer, got {factor}")
    factor = int(factor)
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(oh, ow), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : oh - 1, : ow - 1]
