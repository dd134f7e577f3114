"""PerceptualLoss in chunks (values and gradients equal to the unchunked loss, the memory autograd
keeps, each target embedded once) and in low precision (bf16/fp16 autocast, bf16 inputs,
channels-last inputs)."""
import weakref

import pytest
import torch
import torch.nn.functional as F

from condinst_percep.perceptual import PerceptualLoss
from tests.perceptual.loss_helpers import assert_close_rel, small_net, soft_masks


def _value_and_grad(loss, pred, target, reduction, upstream=None, **kwargs):
    pred = pred.detach().clone().requires_grad_(True)
    out = loss(pred, target, reduction=reduction, **kwargs)
    (out if upstream is None else (out * upstream).sum()).backward()
    return out.detach(), pred.grad


def _rel_gap(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 9])
def test_chunked_value_and_gradient_equal_unchunked(chunk_size, dtype, tol):
    net = small_net().to(dtype)
    pred = soft_masks(5, (24, 19), seed=3).to(dtype)
    target = soft_masks(5, (24, 19), seed=4).to(dtype)
    upstream = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7], dtype=dtype)
    for reduction, up in (("mean", None), ("none", upstream)):
        weights = (0.5, 0.0, 1.0)
        whole = PerceptualLoss(net, weights, 0.5)
        chunked = PerceptualLoss(net, weights, 0.5, chunk_size=chunk_size)
        ref_v, ref_g = _value_and_grad(whole, pred, target, reduction, up)
        v, g = _value_and_grad(chunked, pred, target, reduction, up)
        assert v.dtype == dtype and g.dtype == dtype
        assert _rel_gap(v, ref_v) <= tol
        # In fp32 the convolution's rounding depends on the batch size (1.5e-6 here between
        # batches of 1 and 5 of the *unchunked* loss), so gradients get a small allowance.
        assert _rel_gap(g, ref_g) <= (tol if dtype == torch.float64 else 3e-6)


class _Box(list):
    """Holds a saved tensor; its finalizer tells when autograd released it."""


def _peak_saved_bytes(loss, pred, target):
    """Peak bytes of autograd-saved tensors alive at once: a property of the graph, no timing."""
    live, peak = [0], [0]

    def release(nbytes):
        live[0] -= nbytes

    def pack(t):
        box = _Box([t])
        nbytes = t.numel() * t.element_size()
        live[0] += nbytes
        peak[0] = max(peak[0], live[0])
        weakref.finalize(box, release, nbytes)
        return box

    pred = pred.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box[0]):
        out = loss(pred, target)
    out.backward()
    return peak[0]


def test_chunking_bounds_the_memory_autograd_keeps():
    net = small_net()
    pred, target = soft_masks(8, (32, 32), seed=5), soft_masks(8, (32, 32), seed=6)
    whole = _peak_saved_bytes(PerceptualLoss(net), pred, target)
    chunked = _peak_saved_bytes(PerceptualLoss(net, chunk_size=2), pred, target)
    assert whole > 0
    # One chunk of 2 holds a quarter of the activations of 8, plus the injected gradient.
    assert chunked < 0.35 * whole, (chunked, whole)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_target_index_equals_expanded_targets_and_embeds_each_once(chunk_size):
    net = small_net()
    unique = soft_masks(3, (16, 21), seed=7)
    index = torch.tensor([0, 2, 2, 1, 0, 2])
    pred = soft_masks(6, (16, 21), seed=8)
    loss = PerceptualLoss(net, (0.2, 0.3, 1.0), chunk_size=chunk_size)
    ref_v, ref_g = _value_and_grad(loss, pred, unique[index], "none", torch.arange(6.0))

    seen = []
    handle = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    v, g = _value_and_grad(loss, pred, unique, "none", torch.arange(6.0), target_index=index)
    handle.remove()
    assert_close_rel(v, ref_v)
    assert_close_rel(g, ref_g)
    assert sum(seen) == 6 + 3, seen


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_bf16_autocast_on_cpu(chunk_size):
    net = small_net()
    loss = PerceptualLoss(net, chunk_size=chunk_size)
    pred, target = soft_masks(3, (32, 32), seed=15), soft_masks(3, (32, 32), seed=16)
    ref_v, ref_g = _value_and_grad(loss, pred, target, "mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, g = _value_and_grad(loss, pred, target, "mean")
    assert v.dtype == torch.float32 and g.dtype == torch.float32
    assert net.dtype == torch.float32
    assert (v - ref_v).abs() < 0.05 * ref_v
    assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) > 0.95


def test_fp16_autocast_chunked_gradient_does_not_underflow():
    # Inputs scaled by 1e-3 make the network's activation gradients ~1e-7, below fp16's
    # smallest normal number: the chunked path's inner backward must be scaled like a
    # GradScaler would scale it (without it, the cosine here drops to ~0.95).
    net = small_net()
    pred = 1e-3 * soft_masks(4, (32, 32), seed=15)
    target = 1e-3 * soft_masks(4, (32, 32), seed=16)
    ref_v, ref_g = _value_and_grad(PerceptualLoss(net), pred, target, "mean")
    with torch.autocast("cpu", dtype=torch.float16):
        v, g = _value_and_grad(PerceptualLoss(net, chunk_size=2), pred, target, "mean")
    assert v.dtype == torch.float32 and torch.isfinite(g).all()
    assert (v - ref_v).abs() < 0.01 * ref_v
    assert F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0) > 0.998


def test_low_precision_input_without_autocast_runs_in_the_network_dtype():
    net = small_net()
    loss = PerceptualLoss(net)
    pred, target = soft_masks(2, (16, 16), seed=17), soft_masks(2, (16, 16), seed=18)
    half = pred.to(torch.bfloat16).requires_grad_(True)
    out = loss(half, target)
    out.backward()
    assert net.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, loss(half.detach().float(), target))


def test_channels_last_inputs_softmax_maps():
    net = small_net(in_channels=4)
    gen = torch.Generator().manual_seed(19)
    pred = torch.softmax(torch.randn(3, 4, 18, 22, generator=gen), dim=1)
    target = torch.softmax(torch.randn(3, 4, 18, 22, generator=gen), dim=1)
    loss = PerceptualLoss(net, chunk_size=2)
    ref_v, ref_g = _value_and_grad(loss, pred, target, "none", torch.ones(3))
    cl = torch.channels_last
    v, g = _value_and_grad(loss, pred.to(memory_format=cl), target.to(memory_format=cl), "none",
                           torch.ones(3))
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6 * ref_g.abs().max().item())
