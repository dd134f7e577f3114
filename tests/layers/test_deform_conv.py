"""deform_conv2d against a per-sample transcription of detectron2's CUDA kernels
(``layers/csrc/deformable/deform_conv_cuda_kernel.cu``: ``deformable_im2col_bilinear`` and the
``h_im > -1 && w_im > -1 && h_im < height && w_im < width`` test), against F.conv2d for zero
offsets, and with gradcheck (torchvision's compiled CPU op: tests/d2/test_boxinst_dcn_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from condinst_percep.layers import DeformConv, ModulatedDeformConv, deform_conv2d


def kernel_columns(x, offset, mask, kh, kw, stride, padding, dilation, g):
    """(N, C, K, Ho, Wo) sampled columns, one scalar at a time as the CUDA kernel computes
    them; differentiable, so autograd through it gives the kernel's gradient rules."""
    n, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    cpg = c // g
    out = []
    for b in range(n):
        for ch in range(c):
            grp = ch // cpg
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    for oh in range(ho):
                        for ow in range(wo):
                            at = grp * 2 * kh * kw + 2 * k
                            h_im = oh * stride - padding + i * dilation + offset[b, at, oh, ow]
                            w_im = ow * stride - padding + j * dilation + offset[b, at + 1, oh, ow]
                            val = x.new_zeros(())
                            if h_im > -1 and w_im > -1 and h_im < h and w_im < w:
                                hl, wl = math.floor(h_im.item()), math.floor(w_im.item())
                                lh, lw = h_im - hl, w_im - wl
                                for yy, xx, wt in (
                                    (hl, wl, (1 - lh) * (1 - lw)),
                                    (hl, wl + 1, (1 - lh) * lw),
                                    (hl + 1, wl, lh * (1 - lw)),
                                    (hl + 1, wl + 1, lh * lw),
                                ):
                                    if 0 <= yy <= h - 1 and 0 <= xx <= w - 1:
                                        val = val + wt * x[b, ch, yy, xx]
                            if mask is not None:
                                val = val * mask[b, grp * kh * kw + k, oh, ow]
                            out.append(val)
    return torch.stack(out).reshape(n, c, kh * kw, ho, wo)


def kernel_reference(x, offset, weight, bias, mask, stride, padding, dilation, groups, g):
    c_out, cpg, kh, kw = weight.shape
    cols = kernel_columns(x, offset, mask, kh, kw, stride, padding, dilation, g)
    n, c, k, ho, wo = cols.shape
    cols = cols.reshape(n, groups, cpg * k, ho * wo)
    out = torch.einsum("gok,ngkl->ngol", weight.reshape(groups, c_out // groups, cpg * k), cols)
    out = out.reshape(n, c_out, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


CASES = [
    # (C, C_out, H, W, k, stride, padding, dilation, groups, deformable_groups)
    (4, 6, 5, 6, 3, 1, 1, 1, 1, 1),
    (4, 4, 7, 5, 3, 2, 1, 1, 2, 2),
    (2, 3, 6, 6, 3, 1, 2, 2, 1, 2),
    (3, 2, 4, 5, 1, 1, 0, 1, 1, 1),
]


def make_inputs(case, modulated, scale, seed=0):
    c, c_out, h, w, k, s, p, d, groups, g = case
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * p - (d * (k - 1) + 1)) // s + 1
    wo = (w + 2 * p - (d * (k - 1) + 1)) // s + 1
    x = torch.randn(2, c, h, w, generator=gen, dtype=torch.float64)
    offset = scale * torch.randn(2, 2 * g * k * k, ho, wo, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c // groups, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64) if modulated else None
    mask = torch.rand(2, g * k * k, ho, wo, generator=gen, dtype=torch.float64) if modulated else None
    return x, offset, weight, bias, mask


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_forward_and_gradients_match_the_cuda_kernel_semantics(case, modulated, scale):
    """Scale 0: integer positions, taps exactly at -1 on the padded border; 2.5: samples far
    outside the image and between pixels. Gradients of every input, including offsets."""
    _, _, _, _, k, s, p, d, groups, g = case
    inputs = make_inputs(case, modulated, scale)
    leaves = [t.requires_grad_() if t is not None else None for t in inputs]
    x, offset, weight, bias, mask = leaves
    ours = deform_conv2d(x, offset, weight, bias, mask, s, p, d, groups, g)
    ref = kernel_reference(x, offset, weight, bias, mask, s, p, d, groups, g)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(ours)
    present = [t for t in leaves if t is not None]
    ours_grads = torch.autograd.grad((ours * probe).sum(), present)
    ref_grads = torch.autograd.grad((ref * probe).sum(), present)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_zero_offsets_and_unit_mask_are_the_plain_convolution():
    x = torch.randn(2, 4, 9, 8)
    weight = torch.randn(6, 2, 3, 3)
    bias = torch.randn(6)
    offset = torch.zeros(2, 18, 5, 4)
    out = deform_conv2d(x, offset, weight, bias, torch.ones(2, 9, 5, 4), 2, 1, 1, 2)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, 2, 1, 1, 2), rtol=1e-5, atol=1e-5)


def test_integer_offset_is_a_shift():
    """A constant offset (dy, dx) = (1, -2) on every tap: the plain conv of the shifted image."""
    x = torch.randn(1, 3, 8, 9, dtype=torch.float64)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    offset = torch.tensor([1.0, -2.0], dtype=torch.float64).repeat(9).view(1, 18, 1, 1)
    out = deform_conv2d(x, offset.expand(1, 18, 8, 9).contiguous(), weight, padding=1)
    # Tap (i, j) of output (y, x) reads x[y + i, x + j - 3]: x padded by 3, then cropped.
    expected = F.conv2d(F.pad(x, (3, 3, 3, 3)), weight)[:, :, 3:11, 0:9]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("modulated", [False, True])
def test_gradcheck(modulated):
    # Offsets in (0.1, 0.9) + integers keep every sample off the bilinear kinks.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    frac = 0.1 + 0.8 * torch.rand(1, 36, 3, 3, generator=gen, dtype=torch.float64)
    whole = torch.randint(-2, 2, (1, 36, 3, 3), generator=gen).double()
    offset = (frac + whole).requires_grad_()
    weight = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 18, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, weight, mask, bias):
        return deform_conv2d(
            x, offset, weight, bias if modulated else None, mask if modulated else None,
            stride=2, padding=1, dilation=1, groups=2, deformable_groups=2,
        )

    assert torch.autograd.gradcheck(fn, (x, offset, weight, mask, bias))


def test_modules_state_dict_and_errors():
    m = ModulatedDeformConv(4, 8, 3, padding=1, bias=False, norm=torch.nn.BatchNorm2d(8))
    assert list(m.state_dict()) == [
        "weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked",
    ]
    assert m.weight.shape == (8, 4, 3, 3)
    assert list(ModulatedDeformConv(4, 8, 3).state_dict()) == ["weight", "bias"]
    assert list(DeformConv(4, 8, 3).state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="no bias"):
        DeformConv(4, 8, 3, bias=True)
    with pytest.raises(ValueError, match="deformable_groups"):
        DeformConv(6, 8, 3, deformable_groups=4)
    with pytest.raises(ValueError, match=r"offset must be \(1, 18, 4, 4\)"):
        DeformConv(4, 8, 3, padding=1)(torch.randn(1, 4, 4, 4), torch.zeros(1, 18, 3, 4))
    with pytest.raises(ValueError, match=r"mask must be \(1, 9, 4, 4\)"):
        m(torch.randn(1, 4, 4, 4), torch.zeros(1, 18, 4, 4), torch.zeros(1, 18, 4, 4))


def test_empty_batch_keeps_shape_and_graph():
    m = DeformConv(4, 8, 3, stride=2, padding=1)
    out = m(torch.randn(0, 4, 9, 9), torch.zeros(0, 18, 5, 5))
    assert out.shape == (0, 8, 5, 5)
    out.sum().backward()
    assert m.weight.grad is not None
