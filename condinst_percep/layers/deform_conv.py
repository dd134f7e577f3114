"""Deformable convolutions (DCNv1, Dai et al. 2017; modulated DCNv2, Zhu et al. 2019) in torch.

The semantics are those of detectron2's CUDA kernels (``layers/csrc/deformable``), which its
``DeformConv`` / ``ModulatedDeformConv`` (and so AdelaiDet's ``dcni3`` ResNets) run:

- kernel tap ``k = i * kw + j`` of output pixel ``(ho, wo)`` samples the input at
  ``(ho * stride - pad + i * dilation + dy, wo * stride - pad + j * dilation + dx)``, with
  ``dy = offset[:, g * 2K + 2k]`` and ``dx = offset[:, g * 2K + 2k + 1]`` for deformable group
  ``g`` (input channels split into ``deformable_groups`` consecutive groups);
- bilinear interpolation with zeros outside the image, and a sample whose position is not
  strictly inside ``(-1, H) x (-1, W)`` is zero with zero gradient (the kernels' test, which
  matters at the border: zero offsets put the taps of a padded conv exactly at -1);
- DCNv2 multiplies sample ``k`` of group ``g`` by ``mask[:, g * K + k]``;
- then an ordinary (grouped) convolution of the sampled columns with ``weight``.

Implemented as a gather of the four bilinear corners from the zero-padded input (a small
autograd Function that gathers again in backward instead of keeping the corners) followed by a
matrix product (im2col); autograd gives the other gradients. The float operations follow the
kernels' order (position ``h_in + i * dilation + dy``, interpolation, then the mask): rounding
differences, amplified through a deep network's backward, otherwise show in the gradients
(1e-6 instead of 5e-4 relative against torchvision's CPU op on a DCNv2 ResNet-50). Memory kept
for backward: the sampled columns (N, C, K, Ho * Wo), twice with a mask.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> torch.Tensor:
    """Deformable convolution; with ``mask``, the modulated one (DCNv2).

    Args:
        input: (N, C, H, W) float.
        offset: (N, 2 * G * kh * kw, Ho, Wo), per group and tap (dy, dx), G = deformable_groups.
        weight: (C_out, C / groups, kh, kw).
        bias: (C_out,) or None.
        mask: (N, G * kh * kw, Ho, Wo) modulation scalars (DCNv2; a sigmoid output in
            detectron2's blocks), or None (DCNv1).

    Returns:
        (N, C_out, Ho, Wo) in ``input``'s dtype.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    ho, wo = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    g = deformable_groups
    if c % g or c % groups or c_out % groups or c_per_group * groups != c:
        raise ValueError(
            f"deform_conv2d: {c} input channels, weight {tuple(weight.shape)}, groups {groups} "
            f"and deformable_groups {g} do not fit"
        )
    if offset.shape != (n, 2 * g * taps, ho, wo):
        raise ValueError(
            f"deform_conv2d: offset must be {(n, 2 * g * taps, ho, wo)}, got {tuple(offset.shape)}"
        )
    if mask is not None and mask.shape != (n, g * taps, ho, wo):
        raise ValueError(
            f"deform_conv2d: mask must be {(n, g * taps, ho, wo)}, got {tuple(mask.shape)}"
        )
    if n == 0 or ho <= 0 or wo <= 0:
        return input.new_zeros((n, c_out, max(ho, 0), max(wo, 0))) + weight.sum() * 0

    # Sample positions (N, G, K, Ho, Wo): the kernels' h_in + i * dilation + offset.
    rows = torch.arange(ho, device=input.device) * sh - ph
    cols = torch.arange(wo, device=input.device) * sw - pw
    tap_i = torch.arange(kh, device=input.device).repeat_interleave(kw) * dh
    tap_j = torch.arange(kw, device=input.device).repeat(kh) * dw
    base_y = (rows[None, :, None] + tap_i[:, None, None]).to(offset.dtype)  # (K, Ho, 1)
    base_x = (cols[None, None, :] + tap_j[:, None, None]).to(offset.dtype)  # (K, 1, Wo)
    offset = offset.reshape(n, g, taps, 2, ho, wo)
    y = base_y + offset[:, :, :, 0]
    x = base_x + offset[:, :, :, 1]

    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y_floor, x_floor = torch.floor(y), torch.floor(x)
    ly, lx = y - y_floor, x - x_floor
    hy, hx = 1 - ly, 1 - lx
    # Corners (top-left, top-right, bottom-left, bottom-right): (N, G, 4, K, Ho, Wo).
    corner_weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=2)
    corner_weights = corner_weights * inside.unsqueeze(2).to(corner_weights.dtype)
    # In the input zero-padded by one pixel, both corners of an inside sample are in range.
    wp = w + 2
    top_left = (y_floor + 1).clamp(0, h).long() * wp + (x_floor + 1).clamp(0, w).long()
    steps = torch.tensor([0, 1, wp, wp + 1], device=input.device).view(4, 1, 1, 1)
    corners = top_left.unsqueeze(2) + steps

    padded = torch.nn.functional.pad(input, (1, 1, 1, 1)).reshape(n * g, c // g, -1)
    columns = _BilinearGather.apply(
        padded,
        corners.reshape(n * g, 4, taps * ho * wo),
        corner_weights.reshape(n * g, 4, taps * ho * wo),
    ).reshape(n * g, c // g, taps, ho * wo)
    if mask is not None:
        # After the interpolation, as the kernels do (the same rounding).
        columns = columns * mask.reshape(n * g, 1, taps, ho * wo)
    # (N, C, K, L) -> per conv group (N, groups, C/groups * K, L), weight's (c, i, j) order.
    columns = columns.reshape(n, groups, c_per_group * taps, ho * wo)
    out = torch.matmul(weight.reshape(groups, c_out // groups, c_per_group * taps), columns)
    out = out.reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class _BilinearGather(torch.autograd.Function):
    """``out[b, c, q] = sum_k weights[b, k, q] * input[b, c, index[b, k, q]]`` over the 4
    bilinear corners k, summed left to right as the kernels do. input (B, C, P), index int64
    and weights (B, 4, Q) → (B, C, Q).

    Autograd through ``gather`` would keep the four gathered (B, C, Q) tensors for backward;
    this keeps only the inputs and gathers again in backward, a quarter of the memory."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, index: torch.Tensor, weights: torch.Tensor):
        ctx.save_for_backward(input, index, weights)
        out = None
        for k in range(4):
            term = _gather(input, index[:, k]) * weights[:, k : k + 1]
            out = term if out is None else out.add_(term)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        input, index, weights = ctx.saved_tensors
        grad_input = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.zeros_like(input)
            for k in range(4):
                where = index[:, k : k + 1].expand(-1, input.shape[1], -1)
                grad_input.scatter_add_(2, where, grad_out * weights[:, k : k + 1])
        if ctx.needs_input_grad[2]:
            grad_weights = torch.stack(
                [(grad_out * _gather(input, index[:, k])).sum(dim=1) for k in range(4)], dim=1
            )
        return grad_input, None, grad_weights


def _gather(input: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """input (B, C, P), index (B, Q) → (B, C, Q)."""
    return torch.gather(input, 2, index[:, None].expand(-1, input.shape[1], -1))


class _DeformConvBase(nn.Module):
    """Parameters ``weight`` (C_out, C_in / groups, kh, kw) and ``bias`` (or None), children
    ``norm`` and ``activation`` as detectron2's ``Conv2d``; detectron2's state-dict names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                f"by groups {groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"in_channels {in_channels} must be divisible by deformable_groups "
                f"{deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _conv(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None):
        x = deform_conv2d(
            x, offset, self.weight, self.bias, mask, self.stride, self.padding, self.dilation,
            self.groups, self.deformable_groups,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


class DeformConv(_DeformConvBase):
    """DCNv1 (detectron2's ``DeformConv``; no bias). ``forward(x, offset)``: x (N, C_in, H, W),
    offset (N, 2 * deformable_groups * kh * kw, Ho, Wo) → (N, C_out, Ho, Wo)."""

    def __init__(self, *args, bias: bool = False, **kwargs):
        if bias:
            raise ValueError("DeformConv has no bias (as detectron2's); use ModulatedDeformConv")
        super().__init__(*args, bias=False, **kwargs)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self._conv(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """DCNv2 (detectron2's ``ModulatedDeformConv``; bias by default). ``forward(x, offset,
    mask)``: mask (N, deformable_groups * kh * kw, Ho, Wo), the modulation scalars."""

    def __init__(self, *args, bias: bool = True, **kwargs):
        super().__init__(*args, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._conv(x, offset, mask)
