"""Crop-to-box for the perceptual loss: the margin that makes it exact, the windows (aligned to
the pooling grid, bucketed, batched) and the shared targets' features cut to them.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CropGroup", "bucket_lengths", "check_crop_margin", "crop_work_items", "cropped_target_feats",
    "full_counts", "gather_windows", "plan_crops", "scatter_windows",
]

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


def check_crop_margin(net: nn.Module, level: int, margin, approximate: bool) -> None:
    """Raise ValueError unless cropping to boxes grown by ``margin`` px leaves block ``level``
    (the deepest compared) of ``net`` exact: ``net`` must report its receptive field and map
    0 to 0, and ``margin`` be at least its support radius there (unless ``approximate``)."""
    if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
        raise ValueError(f"crop_margin must be None or an int >= 0, got {margin!r}")
    if not all(hasattr(net, a) for a in ("support_radius", "maps_zero_to_zero", "widths")):
        raise ValueError(
            f"crop_margin needs a network that reports its receptive field and biases "
            f"(RandomPerceptualNet), got {type(net).__name__}"
        )
    if not net.maps_zero_to_zero():
        raise ValueError(
            "crop_margin needs a loss network that maps 0 to 0 (zero biases); this one has "
            "non-zero biases (e.g. the pretrained 'T' variant), so features outside the "
            "boxes would not vanish"
        )
    need = net.support_radius(level)
    if margin < need and not approximate:
        raise ValueError(
            f"crop_margin={margin} is below the support radius {need} px of block "
            f"{level} (receptive field {net.receptive_field(level)} "
            "px): the cropped loss would differ from the full one; use crop_margin >= "
            f"{need}, or crop_approximate=True to accept the difference"
        )


def full_counts(widths: Sequence[int], levels: Sequence[int], size: tuple[int, int]) -> list[int]:
    """Elements per instance of each block in ``levels`` over the full (H, W) map (block l
    has ``widths[l]`` channels at stride 2^(l+1)): a crop's loss is normalised by these."""
    h, w = size
    return [widths[lv] * -(-h // 2 ** (lv + 1)) * -(-w // 2 ** (lv + 1)) for lv in levels]


def crop_work_items(
    boxes: torch.Tensor,
    size: tuple[int, int],
    margin: int,
    grid: int,
    chunk_size: int | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, int, int]]]:
    """(index, (top, left, height, width)) per batch of crops: the groups of :func:`plan_crops`,
    each split so that a batch holds at most ``chunk_size`` full (H, W) maps' pixels (the
    whole group when ``chunk_size`` is None). ``index``, ``top``, ``left``: (k,) int64."""
    area = size[0] * size[1]
    for g in plan_crops(boxes, size, margin, grid, device):
        k = len(g.index)
        per = k if chunk_size is None else max(1, chunk_size * area // (g.height * g.width))
        for s in range(0, k, per):
            yield g.index[s : s + per], (g.top[s : s + per], g.left[s : s + per], g.height, g.width)


def cropped_target_feats(
    target_feats: list[torch.Tensor],
    energies: list[torch.Tensor],
    index: torch.Tensor,
    window: tuple[torch.Tensor, torch.Tensor, int, int],
    levels: Sequence[int],
    layer_weights: Sequence[float],
    counts: list[int],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The features of whole targets cut to the windows of the instances, and what the cut
    leaves out of the loss: per instance the target energy outside its window, weighted and
    normalised as the loss's terms.

    Args:
        target_feats: per compared block (``levels``), (G, C_l, H_l, W_l) features of the G
            whole targets; ``energies`` their per-target sums of squares, (G,) float64.
        index: (k,) int64, each instance's target; ``window``: its crop (top, left, height,
            width) in input pixels, as :func:`crop_work_items` gives.
        counts: :func:`full_counts` of the compared blocks.

    Returns (per block (k, C_l, h_l, w_l) cuts, (k,) float64 outside energies).
    """
    top, left, height, width = window
    feats, outside = [], 0.0
    for level, f, energy, count in zip(levels, target_feats, energies, counts):
        cell = 2 ** (level + 1)
        cut = gather_windows(
            f, index, top // cell, left // cell, -(-height // cell), -(-width // cell)
        )
        inside = cut.double().square().flatten(1).sum(1)
        outside = outside + layer_weights[level] * (energy[index] - inside) / count
        feats.append(cut)
    return feats, outside
