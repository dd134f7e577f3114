"""Normalisation layers with detectron2's semantics and names.

``get_norm(norm, channels)`` maps a config string to a module:

=============  ===============================================================================
``""``/None    no normalisation (returns None)
``"BN"``       ``nn.BatchNorm2d``: statistics of this process's batch only
``"SyncBN"``   :class:`NaiveSyncBatchNorm`: statistics averaged over all processes (gloo or
               NCCL); exactly ``BN`` when there is one process or no process group
``"nnSyncBN"`` ``nn.SyncBatchNorm``: torch's implementation, which needs CUDA tensors when a
               process group of more than one process is initialised
``"FrozenBN"`` :class:`FrozenBatchNorm2d`: fixed affine transform from stored statistics
``"GN"``       ``nn.GroupNorm(32, channels)``
=============  ===============================================================================
"""
from __future__ import annotations

import functools
import logging
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from ..config.config import lookup
from ..config.validate import Report, check_choice
from ..utils import comm

logger = logging.getLogger(__name__)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, per channel, for an
    (N, C, H, W) input of any float dtype. Buffers are named like BatchNorm2d's (no
    ``num_batches_tracked``), so MSRA/detectron2/AdelaiDet checkpoints load by name.
    """

    # 1: no running stats; 2: running_var stored without eps; 3: detectron2's current format.
    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # 1 - eps so that a fresh module is the identity.
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # Folding into one multiply-add avoids F.batch_norm saving its input for backward.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            bias = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(
                x.dtype
            )
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Version-1 checkpoints hold only weight and bias: statistics are the identity.
            state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
            state_dict.setdefault(prefix + "running_var", torch.ones_like(self.running_var))
        if version is not None and version < 3 and prefix + "running_var" in state_dict:
            logger.info("FrozenBatchNorm %s is upgraded to version 3.", prefix.rstrip("."))
            # Before version 3, running_var was used without adding eps.
            state_dict[prefix + "running_var"] = state_dict[prefix + "running_var"] - self.eps
        # A BatchNorm2d checkpoint (e.g. torchvision's) carries a counter that is meaningless here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm in ``module`` (or ``module`` itself) by a
        FrozenBatchNorm2d holding its current statistics; returns the converted module."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is again a sum over processes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all processes (detectron2's).

    Every process weighs equally (as detectron2's default ``stats_mode=""``), so per-process
    batches should have equal size. Works with gloo on CPU and NCCL on GPU. In eval mode, or with
    a single process, it is exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world_size = comm.get_world_size()
        if world_size == 1 or not self.training:
            return super().forward(x)
        c = x.shape[1]
        dims = [0, 2, 3]
        stats = torch.cat([x.float().mean(dim=dims), (x.float() ** 2).mean(dim=dims)])
        stats = _AllReduceSum.apply(stats) * (1.0 / world_size)
        mean, meansqr = torch.split(stats, c)
        var = meansqr - mean * mean
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        with torch.no_grad():
            self.running_mean += self.momentum * (mean.detach() - self.running_mean)
            self.running_var += self.momentum * (var.detach() - self.running_var)
            self.num_batches_tracked += 1
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)


def guard_batch_statistics(model: nn.Module, config_keys: Mapping[str, str]) -> None:
    """Make every batch norm in ``model`` that takes its statistics from this process's batch
    raise a ValueError naming the layer, instead of torch's bare "Expected more than 1 value per
    channel", when it gets one value per channel in training: a lone image no larger than the
    layer's stride. ``config_keys`` maps module-name prefixes, tried in order, to the config key
    that chose the layer's norm, which the message names.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            key = next((k for prefix, k in config_keys.items() if name.startswith(prefix)), "")
            module.register_forward_pre_hook(
                functools.partial(_check_batch_statistics, name=name, key=key)
            )


def _check_batch_statistics(
    module: nn.modules.batchnorm._BatchNorm, args: tuple, *, name: str, key: str
) -> None:
    x = args[0]
    if not module.training or x.numel() != x.shape[1]:
        return
    if isinstance(module, (NaiveSyncBatchNorm, nn.SyncBatchNorm)) and comm.get_world_size() > 1:
        return  # the statistics also count the other processes' values
    chosen_by = f" (chosen by {key})" if key else ""
    raise ValueError(
        f"{name}: its batch norm{chosen_by} cannot compute statistics in training from one value "
        f"per channel (input {tuple(x.shape)}): a lone image no larger than the layer's stride "
        "gives a 1x1 map. Use more images per process (SOLVER.IMS_PER_BATCH), larger images "
        "(INPUT.MIN_SIZE_TRAIN), or a norm without batch statistics (FrozenBN, GN)"
    )


_NORMS = {
    "BN": nn.BatchNorm2d,
    "SyncBN": NaiveSyncBatchNorm,
    "nnSyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}


# The names get_norm builds ("" for none is accepted where a layer may have no norm).
NORM_NAMES = tuple(_NORMS)


def check_norm_cfg(cfg, bad: Report, key: str, channels: list[int], optional: bool = True) -> None:
    """Checks the norm named by config ``key`` for layers of ``channels``: a name of
    :func:`get_norm` (or "" when ``optional``), GN's 32 groups dividing every width, and
    torch's SyncBatchNorm only where it can run (CUDA when several processes train)."""
    norm = lookup(cfg, key)
    check_choice(cfg, bad, key, ("",) * optional + NORM_NAMES)
    if norm == "GN" and any(c % 32 for c in channels):
        bad(key, f"GN uses 32 groups: every width must divide by 32, got {sorted(set(channels))}")
    if norm == "nnSyncBN" and cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        bad(key, "torch's SyncBatchNorm needs CUDA across processes; use 'SyncBN'")


def get_norm(norm: str | None, out_channels: int) -> nn.Module | None:
    """The normalisation layer named ``norm`` for ``out_channels`` channels, or None for ""."""
    if not norm:
        return None
    if norm not in _NORMS:
        raise ValueError(
            f"unknown normalisation {norm!r}; choose one of {sorted(_NORMS)} or '' for none"
        )
    if norm == "GN" and out_channels % 32:
        raise ValueError(f"GN uses 32 groups, but the layer has {out_channels} channels")
    return _NORMS[norm](out_channels)
