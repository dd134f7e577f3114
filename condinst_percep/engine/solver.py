"""Optimizer, gradient clipping and learning-rate schedule with detectron2's semantics.

- SGD with one hyper-parameter set per parameter: ``WEIGHT_DECAY`` in general,
  ``WEIGHT_DECAY_NORM`` for the parameters of normalisation layers, and for every parameter named
  ``bias`` the learning rate ``BASE_LR * BIAS_LR_FACTOR`` and ``WEIGHT_DECAY_BIAS`` (when not
  None); the bias rule applies last, so it also covers norm biases (detectron2 >= 0.3).
  Parameters with ``requires_grad=False`` (frozen stages, the teacher) are left out, shared
  parameters are counted once; equal hyper-parameter sets are merged into one group.
- The schedule is an fvcore ParamScheduler over training progress in [0, 1), a warmup followed by
  multi-step or cosine decay, applied as a multiplier of each group's initial lr and stepped once
  per iteration.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from torch import nn

from ..config.validate import Report, check_choice, collect_problems
from .train_loop import AMP_DTYPES

__all__ = [
    "NORM_MODULE_TYPES",
    "check_solver_cfg",
    "get_default_optimizer_params",
    "build_optimizer",
    "build_gradient_clipper",
    "WarmupParamScheduler",
    "LRMultiplier",
    "build_lr_scheduler",
]

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR")
WARMUP_METHODS = ("linear", "constant")
CLIP_TYPES = ("value", "norm", "full_model")


def check_solver_cfg(cfg, bad: Report) -> None:
    """The checks of the ``SOLVER`` keys (see ``collect_problems``): the optimizer's, the
    clipping's and the schedule's, and the batch, checkpoint period, AMP and scaling keys the
    trainer reads. Each builder here runs them unless told the caller did (``checked``), since
    it also takes configs that never went through ``validate_cfg``."""
    s = cfg.SOLVER
    check_choice(cfg, bad, "SOLVER.LR_SCHEDULER_NAME", LR_SCHEDULERS)
    check_choice(cfg, bad, "SOLVER.WARMUP_METHOD", WARMUP_METHODS)
    check_choice(cfg, bad, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", CLIP_TYPES)
    check_choice(cfg, bad, "SOLVER.AMP.DTYPE", AMP_DTYPES)
    if s.BASE_LR <= 0:
        bad("SOLVER.BASE_LR", "must be positive")
    if s.MAX_ITER < 1:
        bad("SOLVER.MAX_ITER", "must be a positive integer")
    steps = list(s.STEPS)
    if steps != sorted(steps) or len(set(steps)) != len(steps) or any(x <= 0 for x in steps):
        bad("SOLVER.STEPS", "must be positive and strictly increasing")
    if not 0.0 <= s.MOMENTUM < 1.0:
        bad("SOLVER.MOMENTUM", "must lie in [0, 1)")
    if not 0.0 <= s.WARMUP_FACTOR <= 1.0:
        bad("SOLVER.WARMUP_FACTOR", "must lie in [0, 1]")
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR" and s.BASE_LR_END > s.BASE_LR:
        bad(
            "SOLVER.BASE_LR_END",
            f"the cosine schedule ends at most at SOLVER.BASE_LR = {s.BASE_LR}",
        )
    for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "BASE_LR_END", "WARMUP_ITERS",
                "REFERENCE_WORLD_SIZE", "BIAS_LR_FACTOR"):
        if s[key] < 0:
            bad(f"SOLVER.{key}", "must be >= 0")
    if s.WEIGHT_DECAY_BIAS is not None and s.WEIGHT_DECAY_BIAS < 0:
        bad("SOLVER.WEIGHT_DECAY_BIAS", "must be None or >= 0")
    if s.GAMMA <= 0:
        bad("SOLVER.GAMMA", "must be positive")
    if s.IMS_PER_BATCH < 1 or s.CHECKPOINT_PERIOD < 1:
        bad("SOLVER.IMS_PER_BATCH", "IMS_PER_BATCH and CHECKPOINT_PERIOD must be positive")
    if s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_VALUE <= 0:
        bad("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "must be positive")


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` following detectron2's rules (see module doc).

    Returns a list of ``{"params": [...], "lr": float, "weight_decay": float}``, one per distinct
    (lr, weight_decay) pair, in the order their first parameter appears in the model.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    seen: set[int] = set()
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if isinstance(module, NORM_MODULE_TYPES) and weight_decay_norm is not None:
                decay = weight_decay_norm
            if param_name == "bias":
                lr = base_lr * bias_lr_factor
                if weight_decay_bias is not None:
                    decay = weight_decay_bias
            groups[(lr, decay)].append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def build_optimizer(cfg, model: nn.Module, *, checked: bool = False) -> torch.optim.Optimizer:
    """SGD over ``model``'s trainable parameters with ``cfg.SOLVER``'s hyper-parameters
    (checked by :func:`check_solver_cfg` unless ``checked``)."""
    if not checked:
        collect_problems(cfg, [check_solver_cfg])
    solver = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    if not params:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False)")
    return torch.optim.SGD(
        params, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV
    )


def build_gradient_clipper(
    cfg, *, checked: bool = False
) -> Callable[[Iterable[torch.Tensor]], None] | None:
    """The clipping function ``SOLVER.CLIP_GRADIENTS`` asks for, or None when disabled.

    ``CLIP_TYPE``: ``"value"`` clamps every gradient entry to ``[-CLIP_VALUE, CLIP_VALUE]``;
    ``"norm"`` rescales each parameter's gradient to norm <= ``CLIP_VALUE`` separately
    (detectron2); ``"full_model"`` rescales all gradients together so that their joint norm is
    <= ``CLIP_VALUE`` (as in DETR / Mask2Former). Norms use ``NORM_TYPE``. ``cfg.SOLVER`` is
    checked by :func:`check_solver_cfg` unless ``checked``.
    """
    if not checked:
        collect_problems(cfg, [check_solver_cfg])
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    value, norm_type = float(clip.CLIP_VALUE), float(clip.NORM_TYPE)
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(list(params), value)
    if clip.CLIP_TYPE == "norm":

        def clip_each(params: Iterable[torch.Tensor]) -> None:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)

        return clip_each
    return lambda params: torch.nn.utils.clip_grad_norm_(list(params), value, norm_type)


class WarmupParamScheduler(CompositeParamScheduler):
    """``scheduler`` preceded by a warmup over the first ``warmup_length`` fraction of training.

    The warmup starts at ``warmup_factor * scheduler(0)`` and is either constant or rises
    linearly to ``scheduler(warmup_length)``; afterwards ``scheduler`` runs on the absolute
    progress (so a step at iteration 60000 stays at 60000 whatever the warmup).
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
    ) -> None:
        end_value = scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(
                f"SOLVER.WARMUP_METHOD = {warmup_method!r}; expected one of {WARMUP_METHODS}"
            )
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's lr to ``initial_lr * multiplier(iteration / max_iter)``.

    Step it once per iteration, after ``optimizer.step()``. Its state is the iteration count and
    the initial lrs, so a resumed run continues the same curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:
        multiplier = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]


def build_lr_scheduler(
    cfg, optimizer: torch.optim.Optimizer, *, checked: bool = False
) -> LRMultiplier:
    """``SOLVER.LR_SCHEDULER_NAME``: ``WarmupMultiStepLR`` (×GAMMA at each of ``STEPS``) or
    ``WarmupCosineLR`` (half cosine from BASE_LR to BASE_LR_END over MAX_ITER), both with
    ``WARMUP_METHOD`` / ``WARMUP_FACTOR`` / ``WARMUP_ITERS`` (checked by
    :func:`check_solver_cfg` unless ``checked``)."""
    if not checked:
        collect_problems(cfg, [check_solver_cfg])
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        # A step at MAX_ITER would act after the last iteration (and fvcore refuses it).
        steps = [s for s in solver.STEPS if s < solver.MAX_ITER]
        if len(steps) != len(solver.STEPS):
            logging.getLogger(__name__).warning(
                f"SOLVER.STEPS {tuple(solver.STEPS)} has values at or beyond SOLVER.MAX_ITER "
                f"{solver.MAX_ITER}; they never take effect and are ignored"
            )
        sched: ParamScheduler = MultiStepParamScheduler(
            values=[solver.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=solver.MAX_ITER,
        )
    else:
        sched = CosineParamScheduler(1.0, solver.BASE_LR_END / solver.BASE_LR)
    sched = WarmupParamScheduler(
        sched,
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=solver.MAX_ITER)
