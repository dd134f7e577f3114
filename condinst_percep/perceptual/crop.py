"""Crop-to-box windows for the perceptual loss: exact, aligned to the pooling grid, bucketed.

Why a crop can be exact. The loss network has zero biases, so φ(0) = 0, and the output of block
l at a grid cell depends only on input pixels within ``r = net.support_radius(l)`` of the cell
(receptive field 2·r + 2^(l+1)). If an input is zero outside a box B, every activation of every
layer up to block l is zero farther than r from B. A window W ⊇ B grown by r on each side then
sees, at every layer, either the real activations or zeros where the real ones are zero too: its
"same" zero padding is exact on a side inside the map. On a side where B grown by r leaves the
map, the full map's own padding truncates activations, so the window must end exactly at that
border (never padded beyond it). Windows start on the pooling grid (multiples of 2^(l+1)), so
each window's pooled cells are cells of the full map's grid; a window's last pooling window may
be partial, which changes nothing because the missing activations are zero and the pooled ones,
after ReLU, are ≥ 0.

Buckets. Each window length per axis is taken from a short ladder of lengths ≡ H (mod grid)
(≤ H), so every window fits inside the map with an aligned start — either at the grid point
below its required start, or ending exactly at the far border. Instances are grouped by
(height, width) bucket: a few distinct shapes, each run as one batch.
"""
from dataclasses import dataclass

import torch

__all__ = ["CropGroup", "bucket_lengths", "gather_windows", "plan_crops", "scatter_windows"]

# Multiples of the grid per bucket (ratio ≤ 1.5 between neighbours: ≤ 50 % extra per axis).
_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass
class CropGroup:
    """Instances cropped to windows of one shape.

    index: (k,) int64 on the maps' device, the instances of the group (ascending).
    top, left: (k,) int64 on the same device, window origins (multiples of the grid).
    height, width: window size in pixels (Python ints, identical for the group).
    """

    index: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: int
    width: int


def bucket_lengths(full: int, grid: int) -> torch.Tensor:
    """Ascending window lengths ≡ ``full`` (mod ``grid``), each ≤ ``full``; ``full`` last."""
    rest = full % grid
    steps = ((0,) if rest else ()) + _LADDER
    lengths = [rest + grid * k for k in steps if rest + grid * k < full]
    return torch.tensor(lengths + [full], dtype=torch.int64)


def _axis_windows(lo: torch.Tensor, hi: torch.Tensor, margin: int, full: int, grid: int):
    """Window (start, bucket index, lengths) per instance along one axis.

    lo, hi: (n,) float64 box extent [lo, hi) in pixels. Needed: [lo − margin, hi + margin]
    clipped to [0, full). Start = the grid point at or below the needed start, moved back so the
    window ends at ``full`` at the latest; the window then always ends at the border when the
    needed range reaches it.
    """
    lo = lo.clamp(0, full).floor().to(torch.int64)
    hi = torch.maximum(hi.clamp(0, full).ceil().to(torch.int64), lo)
    need_lo = (lo - margin).clamp(min=0)
    need_hi = (hi + margin).clamp(max=full)
    start = torch.div(need_lo, grid, rounding_mode="floor") * grid
    lengths = bucket_lengths(full, grid)
    bucket = torch.searchsorted(lengths, need_hi - start).clamp(max=len(lengths) - 1)
    start = torch.minimum(start, full - lengths[bucket])
    return start, bucket, lengths


def plan_crops(
    boxes: torch.Tensor, size: tuple[int, int], margin: int, grid: int, device: torch.device
) -> list[CropGroup]:
    """Windows for ``boxes`` (n, 4) XYXY in pixels of maps of ``size`` (H, W), grouped by shape.

    Copies ``boxes`` to the host once (one synchronisation on a GPU): shapes are host values.
    Every window lies inside the map, starts on a multiple of ``grid`` (or where the map's far
    border forces it, ``size − length``, itself a multiple of ``grid`` by construction) and
    contains the box grown by ``margin``, clipped to the map.
    """
    height, width = size
    host = boxes.detach().to("cpu", torch.float64)
    top, row_bucket, row_lengths = _axis_windows(host[:, 1], host[:, 3], margin, height, grid)
    left, col_bucket, col_lengths = _axis_windows(host[:, 0], host[:, 2], margin, width, grid)
    key = row_bucket * len(col_lengths) + col_bucket
    groups = []
    for k in torch.unique(key).tolist():
        members = (key == k).nonzero().flatten()
        groups.append(
            CropGroup(
                index=members.to(device),
                top=top[members].to(device),
                left=left[members].to(device),
                height=int(row_lengths[k // len(col_lengths)]),
                width=int(col_lengths[k % len(col_lengths)]),
            )
        )
    return groups


def gather_windows(
    maps: torch.Tensor,
    index: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """(k, C, height, width): ``maps[index[i], :, top[i]:top[i]+height, left[i]:left[i]+width]``.

    One advanced-indexing gather (differentiable; its backward scatters into ``maps``' shape).
    maps: (n, C, H, W); index, top, left: (k,) int64 on ``maps``' device. For feature maps of a
    coarser level pass ``top``/``left`` and sizes in that level's cells.
    """
    rows = top[:, None] + torch.arange(height, device=maps.device)
    cols = left[:, None] + torch.arange(width, device=maps.device)
    # Advanced indices around a slice put their dims first: (k, height, width, C).
    picked = maps[index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()


def scatter_windows(
    out: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: int,
    width: int,
) -> None:
    """In place: ``out[index[i], :, window i] = values[i]``, the inverse of
    :func:`gather_windows` (windows of distinct instances; ``index`` without repeats)."""
    rows = top[:, None] + torch.arange(height, device=out.device)
    cols = left[:, None] + torch.arange(width, device=out.device)
    channels_last_view = out.permute(0, 2, 3, 1)
    channels_last_view[index[:, None, None], rows[:, :, None], cols[:, None, :]] = values.permute(
        0, 2, 3, 1
    ).to(out.dtype)
