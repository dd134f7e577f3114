"""Small tensors of host-known values built on the device without a host-to-device copy.

``torch.tensor(values, device="cuda")`` copies from pageable host memory and then waits for
the whole stream (``memcpy_and_sync``): inside a training step, a host synchronisation like
``.item()``. Fill kernels take their value as a kernel argument instead, so building a handful
of values with them never waits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["segment_ids", "values_on"]


def values_on(
    values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)`` (1-D), one fill kernel per value."""
    if not values:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.cat([torch.full((1,), v, dtype=dtype, device=device) for v in values])


def segment_ids(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """int64 (sum(lengths),): ``i`` repeated ``lengths[i]`` times, e.g. the image or FPN level
    of each flattened element."""
    if not lengths:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(
        [torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(lengths)]
    )
