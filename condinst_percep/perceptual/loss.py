"""The generic perceptual loss: squared distance of frozen random-network embeddings."""
import math
from collections.abc import Sequence

import torch
from torch import nn

from .chunked_grad import InjectGrad, input_grad
from .crop import (
    check_crop_margin, crop_work_items, cropped_target_feats, full_counts, gather_windows,
    scatter_windows,
)
from .inputs import check_inputs
from .precision import AUTOCAST_NAMES, autocast_context, autocast_dtype
from .random_net import INITS, VGG_STRUCTURES, VGG_WIDTHS, RandomPerceptualNet, vgg_arch

__all__ = ["PerceptualLoss"]

REDUCTIONS = ("mean", "none")
AUTOCAST_DTYPES = tuple(AUTOCAST_NAMES.values())


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
            differentiable once (no double backward). With crops, a chunk holds as many
            crops as fit in ``chunk_size`` full maps' pixels.
        crop_margin: opt-in crop-to-box (see :mod:`.crop`): ``forward`` then needs ``boxes``
            and embeds each instance inside its box grown by ``crop_margin`` pixels, aligned to
            the pooling grid, batched by bucketed window size, normalised by the full map's
            element counts. Needs a network with zero biases (φ(0) = 0, e.g.
            :class:`RandomPerceptualNet` with random weights) and inputs that are 0 outside the
            boxes (probabilities): then the value and gradient equal the uncropped ones.
            ``crop_margin`` must be ≥ ``net.support_radius(l)`` for the deepest compared block
            l (half the receptive field less half its stride), unless ``crop_approximate``.
        crop_approximate: allow a ``crop_margin`` below that bound (a different loss).
        autocast_dtype: precision of the loss network alone: None follows the caller's
            autocast; ``torch.bfloat16`` / ``torch.float16`` run it under autocast in that
            dtype; ``torch.float32`` runs it in float32 even inside the caller's autocast. The
            squared differences and reductions are float32 in every case.
        channels_last: run the network in channels_last (NHWC) memory format: every layer of
            a :class:`RandomPerceptualNet`, the input of another network (same values; faster
            convolutions and pooling for narrow layers on the CPU and on tensor-core GPUs).

    The loss is :meth:`forward`'s value.
    """

    def __init__(
        self,
        net: nn.Module,
        layer_weights: Sequence[float] | None = None,
        loss_weight: float = 1.0,
        chunk_size: int | None = None,
        crop_margin: int | None = None,
        crop_approximate: bool = False,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
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
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast_dtype must be one of {AUTOCAST_DTYPES}, got {autocast_dtype!r}"
            )
        flags = (("crop_approximate", crop_approximate), ("channels_last", channels_last))
        for name, flag in flags:
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        self.net = net
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.loss_weight = float(loss_weight)
        self.chunk_size = chunk_size
        self._levels = [i for i, w in enumerate(self.layer_weights) if w > 0]
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.crop_margin = crop_margin
        self.crop_approximate = crop_approximate
        if crop_margin is not None:
            check_crop_margin(net, self._levels[-1], crop_margin, crop_approximate)
        # Crop windows start on this grid so that pooled cells coincide with the full map's.
        self.crop_grid = 2 ** (self._levels[-1] + 1)

    @classmethod
    def check_cfg(cls, cfg, bad) -> None:
        """The checks of the loss network's and the weights' keys of ``MODEL.PERCEP``, each
        problem reported as ``bad(key, reason)`` (see ``config.validate.collect_problems``)."""
        p = cfg.MODEL.PERCEP
        structure, widths = tuple(p.STRUCTURE), tuple(p.WIDTHS)
        if not structure or not _positive_ints(structure):
            bad("MODEL.PERCEP.STRUCTURE", "needs at least one block, each a positive int")
        if not _positive_ints(widths) or len(widths) != len(structure):
            bad("MODEL.PERCEP.WIDTHS", f"needs one positive int per block ({len(structure)})")
        k = p.KERNEL_SIZE
        if not _positive_ints([k]) or k % 2 == 0:
            bad("MODEL.PERCEP.KERNEL_SIZE", "must be a positive odd int ('same' padding)")
        if p.INIT not in INITS:
            bad("MODEL.PERCEP.INIT", f"must be one of {INITS}")
        elif p.INIT in ("normal", "uniform") and not p.INIT_SCALE > 0:
            bad("MODEL.PERCEP.INIT_SCALE", f"INIT {p.INIT!r} needs a positive scale")
        elif p.INIT not in ("normal", "uniform") and p.INIT_SCALE != 0:
            bad("MODEL.PERCEP.INIT_SCALE", f"INIT {p.INIT!r} takes no scale (leave it 0.0)")
        lw = tuple(p.LAYER_WEIGHTS)
        if lw and (len(lw) != len(structure) or min(lw) < 0 or max(lw) <= 0):
            bad(
                "MODEL.PERCEP.LAYER_WEIGHTS",
                f"needs one weight >= 0 per block ({len(structure)}), not all 0; () = final block",
            )
        if not p.LOSS_WEIGHT >= 0:
            bad("MODEL.PERCEP.LOSS_WEIGHT", "must be >= 0")
        if not isinstance(p.CHUNK_SIZE, int) or p.CHUNK_SIZE < 0:
            bad("MODEL.PERCEP.CHUNK_SIZE", "must be an int >= 0 (0: all instances at once)")
        if not isinstance(p.SEED, int) or isinstance(p.SEED, bool):
            bad("MODEL.PERCEP.SEED", "must be an int")
        if p.PRETRAINED_VGG and vgg_arch(structure, widths, k) is None:
            bad(
                "MODEL.PERCEP.PRETRAINED_VGG",
                "torchvision VGG weights need STRUCTURE of VGG11/13/16/19, the VGG WIDTHS and "
                "KERNEL_SIZE 3",
            )

    @classmethod
    def from_config(cls, cfg, in_channels: int = 1) -> dict:
        """``__init__`` kwargs from ``cfg.MODEL.PERCEP``, the network included.

        ``PRETRAINED_VGG`` set: the "T" variant from that file, ``STRUCTURE`` naming the VGG
        (``WIDTHS``/``KERNEL_SIZE`` must be VGG's, ``INIT`` does not apply); otherwise the random
        network. ``INIT_SCALE`` 0 means none, ``LAYER_WEIGHTS`` empty the final block alone,
        ``CHUNK_SIZE`` 0 all instances at once, ``CROP_MARGIN`` < 0 no crop (with
        ``CROP_APPROXIMATE``), ``AUTOCAST`` "" the caller's precision or "float32" /
        "bfloat16" / "float16", ``CHANNELS_LAST`` a bool.
        Usage: ``PerceptualLoss(**from_config(cfg))``.
        """
        p = cfg.MODEL.PERCEP
        structure = tuple(p.STRUCTURE)
        if p.PRETRAINED_VGG:
            arch = vgg_arch(structure, tuple(p.WIDTHS), p.KERNEL_SIZE)
            if arch is None:
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
            "crop_margin": None if p.CROP_MARGIN < 0 else p.CROP_MARGIN,
            "crop_approximate": p.CROP_APPROXIMATE,
            "autocast_dtype": autocast_dtype(p.AUTOCAST, "MODEL.PERCEP.AUTOCAST"),
            "channels_last": p.CHANNELS_LAST,
        }

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        reduction: str = "mean",
        target_index: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        check_values: bool = True,
    ) -> torch.Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring for the formula).

        Args:
            pred: (n, C, H, W) float — probabilities (after sigmoid/softmax) or a regression
                map such as depth, not logits: the network is positively homogeneous, so the
                loss scales with the square of the input scale.
            target: (n, C, H, W), or with ``target_index`` (G, C, H, W) holding G distinct
                target maps; float or bool. Embedded without grad.
            reduction: ``"mean"`` → scalar; ``"none"`` → (n,) per-instance values (already
                multiplied by ``loss_weight``). float32 (float64 for a float64 network).
            target_index: optional (n,) integer tensor; instance i is compared with
                ``target[target_index[i]]``, and each of the G targets is embedded once.
            boxes: (n, 4) float XYXY in pixels of the (H, W) maps, required with
                ``crop_margin`` (refused without). With ``target_index`` the targets are
                embedded whole and their features cut to the window, and the target energy
                outside the window is added back: the value is then exact whenever ``pred``
                is 0 outside the box, whatever the target. Planning the windows copies
                ``boxes`` to the host (one synchronisation).
            check_values: check on the host that pred and target are finite and
                target_index in range (one synchronisation, shared with the boxes' copy). A
                caller whose inputs come from its own model (the CondInst head, where a
                non-finite loss stops the training loop anyway) passes False: without boxes
                the loss then never waits for the device.

        With no instances the mean is 0 (still connected to ``pred``'s graph). The squared
        differences and their reduction are computed in float32, also under autocast.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if (boxes is None) != (self.crop_margin is None):
            raise ValueError(
                "boxes are required with crop_margin and refused without it: got "
                f"crop_margin={self.crop_margin!r} and boxes "
                + ("None" if boxes is None else f"of shape {tuple(boxes.shape)}")
            )
        host_boxes = check_inputs(self.net, pred, target, target_index, boxes, check_values)
        n = pred.shape[0]
        if n == 0:
            zero = pred.sum(dim=(1, 2, 3)).float() * 0.0
            return zero.sum() if reduction == "mean" else zero

        grad_needed = pred.requires_grad and torch.is_grad_enabled()
        chunked_grad = self.chunk_size is not None and grad_needed
        size = tuple(pred.shape[2:])
        counts = None if host_boxes is None else full_counts(self.net.widths, self._levels, size)
        context, fp16 = self._precision(pred.device.type)
        with context:
            target_feats = energies = None
            if target_index is not None:
                chunk = self.chunk_size or len(target)
                starts = range(0, len(target), chunk)
                parts = [self._embed_target(target[s : s + chunk]) for s in starts]
                target_feats = [torch.cat(level) for level in zip(*parts)]
                if host_boxes is not None:
                    energies = [f.double().square().flatten(1).sum(1) for f in target_feats]
            if chunked_grad:
                acc = torch.promote_types(pred.dtype, torch.float32)
                grad = torch.zeros(pred.shape, dtype=acc, device=pred.device)
            values, order = [], []
            for sel, window in self._work_items(n, size, host_boxes, pred.device):
                p = pred[sel] if window is None else gather_windows(pred, sel, *window)
                feats, outside = self._targets_for(
                    target, target_index, target_feats, energies, sel, window, counts
                )
                if chunked_grad:
                    leaf = p.detach().requires_grad_(True)
                    with torch.enable_grad():
                        v = self._distance(leaf, feats, counts)
                    g = input_grad(v, leaf, fp16)
                    if window is None:
                        grad[sel] = g
                    else:
                        scatter_windows(grad, g, sel, *window)
                    v = v.detach()
                else:
                    v = self._distance(p, feats, counts)
                values.append(v if outside is None else v + outside.to(v.dtype))
                order.append(sel)
        per_instance = torch.cat(values)
        if host_boxes is not None:
            per_instance = per_instance[torch.argsort(torch.cat(order))]
        if chunked_grad:
            per_instance = InjectGrad.apply(pred, per_instance, grad)
        per_instance = per_instance * self.loss_weight
        return per_instance.mean() if reduction == "mean" else per_instance

    def _precision(self, device_type: str):
        """(context for the network's forwards, whether they run in float16)."""
        dtype = self.autocast_dtype
        if dtype is None:
            enabled = torch.is_autocast_enabled(device_type)
            fp16 = enabled and torch.get_autocast_dtype(device_type) == torch.float16
        else:
            fp16 = dtype == torch.float16
        return autocast_context(dtype, device_type), fp16

    def _work_items(self, n: int, size: tuple[int, int], host_boxes, device):
        """(selection, window) per chunk: a slice of instances and no window, or (k,) instance
        indices and their (top, left, height, width) crop windows of one bucket."""
        if host_boxes is None:
            chunk = self.chunk_size or n
            for start in range(0, n, chunk):
                yield slice(start, min(start + chunk, n)), None
            return
        yield from crop_work_items(
            host_boxes, size, self.crop_margin, self.crop_grid, self.chunk_size, device
        )

    def _targets_for(self, target, target_index, target_feats, energies, sel, window, counts):
        """Target features of one work item, and (with crops of shared targets) the weighted,
        normalised target energy outside each window, (k,) float64, else None."""
        if target_feats is None:
            t = target[sel] if window is None else gather_windows(target, sel, *window)
            return self._embed_target(t), None
        index = target_index[sel]
        if window is None:
            return [f[index] for f in target_feats], None
        return cropped_target_feats(
            target_feats, energies, index, window, self._levels, self.layer_weights, counts
        )

    def _embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.channels_last:
            return self.net(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if isinstance(self.net, RandomPerceptualNet):
            return self.net(x, channels_last=True)
        return self.net(x)

    def _embed_target(self, target: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self._embed(target)
        return [feats[i] for i in self._levels]

    def _distance(
        self, pred: torch.Tensor, target_feats: list[torch.Tensor], counts: list[int] | None
    ) -> torch.Tensor:
        """(n,): Σ_l w_l · (sum of squared embedding differences) / (elements per instance of
        block l, the full map's when ``counts`` are given for crops).

        Accumulated in float32, or float64 for a float64 network: never in bf16/fp16.
        """
        feats = self._embed(pred)
        total = None
        for i, (level, t) in enumerate(zip(self._levels, target_feats)):
            acc = torch.promote_types(feats[level].dtype, torch.float32)
            diff = feats[level].to(acc) - t.to(acc)
            if counts is None:
                term = self.layer_weights[level] * diff.square().flatten(1).mean(dim=1)
            else:
                term = self.layer_weights[level] / counts[i] * diff.square().flatten(1).sum(1)
            total = term if total is None else total + term
        return total


def _positive_ints(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
