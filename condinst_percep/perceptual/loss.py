"""The generic perceptual loss: squared distance of frozen random-network embeddings."""
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .random_net import VGG_STRUCTURES, VGG_WIDTHS, RandomPerceptualNet

__all__ = ["PerceptualLoss"]

REDUCTIONS = ("mean", "none")


class _InjectGrad(torch.autograd.Function):
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


class PerceptualLoss(nn.Module):
    """ℓ = loss_weight · mean_i Σ_l w_l · mean_{c,h,w} (φ_l(pred_i) − φ_l(target_i))².

    Args:
        net: the frozen loss network, usually :class:`RandomPerceptualNet`; any module with
            ``in_channels``, ``num_blocks`` and a forward returning ``num_blocks`` feature maps.
        layer_weights: one non-negative weight per block output; default: the final block
            alone with weight 1 (the paper's). ``(1/16, 1/8, 1/4, 1/2, 1)`` is its multi-level
            variant. Blocks with weight 0 are not compared.
        loss_weight: λ, the factor applied last (the paper uses 0.1).
        chunk_size: if set, instances are embedded ``chunk_size`` at a time and each chunk's
            input gradient is computed before the next chunk runs, so peak memory is one
            chunk's; value and gradient equal the unchunked computation. The result is then
            differentiable once (no double backward).

    ``forward(pred, target, reduction="mean", target_index=None)``:
        pred: (n, C, H, W) float — probabilities (after sigmoid/softmax) or a regression map
            such as depth, not logits: the network is positively homogeneous, so the loss
            scales with the square of the input scale.
        target: (n, C, H, W), or with ``target_index`` (G, C, H, W) holding G distinct target
            maps; float or bool. Embedded without grad.
        reduction: ``"mean"`` → scalar; ``"none"`` → (n,) per-instance values (already
            multiplied by ``loss_weight``). float32 (float64 for a float64 network).
        target_index: optional (n,) integer tensor; instance i is compared with
            ``target[target_index[i]]``, and each of the G targets is embedded once.
    With no instances the mean is 0 (still connected to ``pred``'s graph). The squared
    differences and their reduction are computed in float32, also under autocast.
    """

    def __init__(
        self,
        net: nn.Module,
        layer_weights: Sequence[float] | None = None,
        loss_weight: float = 1.0,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if not isinstance(net, nn.Module) or not all(
            hasattr(net, a) for a in ("in_channels", "num_blocks")
        ):
            raise ValueError(
                "net must be an nn.Module with in_channels and num_blocks (e.g. "
                f"RandomPerceptualNet), got {type(net).__name__}"
            )
        num_blocks = net.num_blocks
        if layer_weights is None:
            layer_weights = (0.0,) * (num_blocks - 1) + (1.0,)
        layer_weights = tuple(layer_weights)
        if len(layer_weights) != num_blocks:
            raise ValueError(
                f"layer_weights must have one entry per block of the network ({num_blocks}), "
                f"got {len(layer_weights)}: {layer_weights!r}"
            )
        valid = all(_is_number(w) and math.isfinite(w) and w >= 0 for w in layer_weights)
        if not valid or not any(w > 0 for w in layer_weights):
            raise ValueError(
                "layer_weights must be finite, non-negative and not all zero, got "
                f"{layer_weights!r}"
            )
        if not _is_number(loss_weight) or not math.isfinite(loss_weight) or loss_weight < 0:
            raise ValueError(f"loss_weight must be a finite number >= 0, got {loss_weight!r}")
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0
        ):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        self.net = net
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.loss_weight = float(loss_weight)
        self.chunk_size = chunk_size
        self._levels = [i for i, w in enumerate(self.layer_weights) if w > 0]

    @classmethod
    def from_config(cls, cfg, in_channels: int = 1) -> dict:
        """``__init__`` kwargs from ``cfg.MODEL.PERCEP``, the network included.

        ``PRETRAINED_VGG`` set: the "T" variant from that file, ``STRUCTURE`` naming the VGG
        (``WIDTHS``/``KERNEL_SIZE`` must be VGG's, ``INIT`` does not apply); otherwise the random
        network. ``INIT_SCALE`` 0 means none, ``LAYER_WEIGHTS`` empty the final block alone,
        ``CHUNK_SIZE`` 0 all instances at once. Usage: ``PerceptualLoss(**from_config(cfg))``.
        """
        p = cfg.MODEL.PERCEP
        structure = tuple(p.STRUCTURE)
        if p.PRETRAINED_VGG:
            arch = {s: name for name, s in VGG_STRUCTURES.items()}.get(structure)
            if arch is None or tuple(p.WIDTHS) != VGG_WIDTHS or p.KERNEL_SIZE != 3:
                raise ValueError(
                    f"MODEL.PERCEP.PRETRAINED_VGG={p.PRETRAINED_VGG!r} needs a torchvision VGG: "
                    f"MODEL.PERCEP.STRUCTURE one of {dict(VGG_STRUCTURES)}, WIDTHS {VGG_WIDTHS} "
                    f"and KERNEL_SIZE 3, got {structure}, {tuple(p.WIDTHS)}, {p.KERNEL_SIZE}"
                )
            net = RandomPerceptualNet.from_torchvision_vgg(
                p.PRETRAINED_VGG, in_channels, arch=arch, seed=p.SEED
            )
        else:
            net = RandomPerceptualNet(
                in_channels,
                structure=structure,
                widths=tuple(p.WIDTHS),
                kernel_size=p.KERNEL_SIZE,
                init=p.INIT,
                init_scale=p.INIT_SCALE or None,
                seed=p.SEED,
            )
        return {
            "net": net,
            "layer_weights": tuple(p.LAYER_WEIGHTS) or None,
            "loss_weight": p.LOSS_WEIGHT,
            "chunk_size": p.CHUNK_SIZE or None,
        }

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        reduction: str = "mean",
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self._check_inputs(pred, target, target_index)
        n = pred.shape[0]
        if n == 0:
            zero = pred.sum(dim=(1, 2, 3)).float() * 0.0
            return zero.sum() if reduction == "mean" else zero

        chunk = self.chunk_size or n
        target_feats = None
        if target_index is not None:
            starts = range(0, len(target), chunk)
            unique = [self._embed_target(target[s : s + chunk]) for s in starts]
            target_feats = [torch.cat(level) for level in zip(*unique)]
        grad_needed = pred.requires_grad and torch.is_grad_enabled()
        chunked_grad = self.chunk_size is not None and grad_needed

        values, grads = [], []
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            if target_feats is None:
                feats = self._embed_target(target[start:end])
            else:
                feats = [f[target_index[start:end]] for f in target_feats]
            if chunked_grad:
                leaf = pred[start:end].detach().requires_grad_(True)
                with torch.enable_grad():
                    v = self._distance(leaf, feats)
                values.append(v.detach())
                grads.append(_input_grad(v, leaf))
            else:
                values.append(self._distance(pred[start:end], feats))
        per_instance = torch.cat(values)
        if chunked_grad:
            per_instance = _InjectGrad.apply(pred, per_instance, torch.cat(grads))
        per_instance = per_instance * self.loss_weight
        return per_instance.mean() if reduction == "mean" else per_instance

    def _embed_target(self, target: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.net(target)
        return [feats[i] for i in self._levels]

    def _distance(self, pred: torch.Tensor, target_feats: list[torch.Tensor]) -> torch.Tensor:
        """(n,): Σ_l w_l · mean over C·H·W of the squared embedding difference.

        Accumulated in float32, or float64 for a float64 network: never in bf16/fp16.
        """
        feats = self.net(pred)
        total = None
        for level, t in zip(self._levels, target_feats):
            acc = torch.promote_types(feats[level].dtype, torch.float32)
            diff = feats[level].to(acc) - t.to(acc)
            term = self.layer_weights[level] * diff.square().flatten(1).mean(dim=1)
            total = term if total is None else total + term
        return total

    def _check_inputs(
        self, pred: torch.Tensor, target: torch.Tensor, target_index: torch.Tensor | None
    ) -> None:
        for name, x in (("pred", pred), ("target", target)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{name} must be a 4-D (n, C, H, W) tensor, got {shape}")
            if x.shape[1] != self.net.in_channels:
                raise ValueError(
                    f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}), the loss "
                    f"network takes in_channels={self.net.in_channels}"
                )
            device = getattr(self.net, "device", x.device)
            if x.device != device:
                raise ValueError(
                    f"{name} is on {x.device} but the loss network is on {device}; move the "
                    "network with .to() (the parent model's .to() does it)"
                )
        if target_index is None:
            if target.shape != pred.shape:
                raise ValueError(
                    f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
                    f"and target {tuple(target.shape)}"
                )
        else:
            if target.shape[1:] != pred.shape[1:]:
                raise ValueError(
                    f"target maps must have pred's (C, H, W) {tuple(pred.shape[1:])}, got target "
                    f"{tuple(target.shape)}"
                )
            if (
                not isinstance(target_index, torch.Tensor)
                or target_index.dim() != 1
                or target_index.dtype.is_floating_point
                or target_index.dtype in (torch.bool, torch.complex64, torch.complex128)
                or len(target_index) != len(pred)
            ):
                desc = (
                    f"{target_index.dtype} tensor of shape {tuple(target_index.shape)}"
                    if isinstance(target_index, torch.Tensor)
                    else type(target_index).__name__
                )
                raise ValueError(
                    f"target_index must be an integer tensor of shape ({len(pred)},), got {desc}"
                )
            if len(target_index) and (
                int(target_index.min()) < 0 or int(target_index.max()) >= len(target)
            ):
                raise ValueError(
                    f"target_index values must lie in [0, {len(target)}) for {len(target)} "
                    f"target maps, got min {int(target_index.min())}, max {int(target_index.max())}"
                )
        finite = torch.stack([torch.isfinite(pred).all(), torch.isfinite(target).all()]).tolist()
        for name, ok in zip(("pred", "target"), finite):
            if not ok:
                raise ValueError(f"{name} holds non-finite values (NaN or inf)")


def _input_grad(values: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """∂(Σ values)/∂leaf in at least float32 (each value depends on its own instance only).

    Under fp16 autocast the backward through the network is scaled like a GradScaler would
    scale it (the trainer's scaler cannot reach this inner backward), so small activation
    gradients do not underflow; a scale that overflows is halved in steps of 2^8.
    """
    acc = torch.promote_types(leaf.dtype, torch.float32)
    device = leaf.device.type
    fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
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


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
