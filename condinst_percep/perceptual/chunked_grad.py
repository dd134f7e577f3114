"""Chunked evaluation with the input gradient injected: bounded memory, same value and gradient.

Each chunk's gradient with respect to its (detached) input is computed right after its
forward, so the chunk's activations are freed before the next chunk runs; the per-instance
values are then returned through :class:`InjectGrad`, whose backward multiplies the stored
gradients by the upstream gradient.
"""
import torch
from torch.autograd.function import once_differentiable

__all__ = ["InjectGrad", "input_grad"]


class InjectGrad(torch.autograd.Function):
    """Per-instance values whose input gradient was already computed, chunk by chunk.

    ``values[i]`` depends on ``pred[i]`` alone, so the vector-Jacobian product for an upstream
    gradient ``u`` is ``u[i] * grads[i]``: the same as back-propagating through the network.
    ``grads`` are kept in at least float32 so that a GradScaler's factor in ``u`` is applied
    before rounding to ``pred``'s dtype.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, values: torch.Tensor, grads: torch.Tensor):
        ctx.save_for_backward(grads)
        ctx.pred_dtype = pred.dtype
        return values.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values: torch.Tensor):
        (grads,) = ctx.saved_tensors
        scale = grad_values.reshape((-1,) + (1,) * (grads.dim() - 1))
        return (scale * grads).to(ctx.pred_dtype), None, None


def input_grad(values: torch.Tensor, leaf: torch.Tensor, fp16: bool) -> torch.Tensor:
    """∂(Σ values)/∂leaf in at least float32 (each value depends on its own instance only).

    When the network ran in float16 the backward through it is scaled like a GradScaler would
    scale it (the trainer's scaler cannot reach this inner backward), so small activation
    gradients do not underflow; a scale that overflows is halved in steps of 2^8.
    """
    acc = torch.promote_types(leaf.dtype, torch.float32)
    if not fp16:
        (grad,) = torch.autograd.grad(values.sum(), leaf)
        return grad.to(acc)
    for scale in (2.0**16, 2.0**8, 1.0):
        (grad,) = torch.autograd.grad(values.sum() * scale, leaf, retain_graph=scale > 1)
        grad = grad.to(acc) / scale
        if bool(torch.isfinite(grad).all()):
            return grad
    raise FloatingPointError(
        "the perceptual loss's input gradient is not finite under fp16 autocast even without "
        "scaling; use bf16 autocast"
    )
