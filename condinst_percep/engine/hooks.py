"""Hooks of the default training loop: timing, lr schedule, checkpoints, evaluation, writers."""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Sequence

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer

from ..config.validate import Report, check_choice
from ..evaluation.testing import flatten_results_dict
from ..utils import comm
from ..utils.events import EventWriter
from .train_loop import HookBase

__all__ = [
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "EvalHook",
    "PeriodicWriter",
]


def check_test_cfg(cfg, bad: Report) -> None:
    """The checks of the ``TEST`` keys of evaluation during training (see ``collect_problems``)."""
    if cfg.TEST.EVAL_PERIOD < 0:
        bad("TEST.EVAL_PERIOD", "must be >= 0 (0 disables evaluation during training)")
    check_choice(
        cfg, bad, "TEST.AUG.ENABLED", (False,), "test-time augmentation is not implemented"
    )
    check_choice(cfg, bad, "TEST.PRECISE_BN.ENABLED", (False,), "precise BN is not implemented")


class IterationTimer(HookBase):
    """Puts each iteration's duration as ``time`` and logs the total speed at the end.

    The first ``warmup_iter`` iterations (allocator and cudnn warm-up) are left out of the
    summary.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_start = 0.0
        self._timed_iters = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()
        if self.trainer.iter == self.trainer.start_iter + self._warmup_iter:
            self._timed_start = self._step_start

    def after_step(self) -> None:
        now = time.perf_counter()
        self.trainer.storage.put_scalars(time=now - self._step_start)
        if self.trainer.iter >= self.trainer.start_iter + self._warmup_iter:
            self._timed_iters += 1

    def after_train(self) -> None:
        logger = logging.getLogger(__name__)
        total = time.perf_counter() - self._train_start
        if self._timed_iters > 0:
            timed = time.perf_counter() - self._timed_start
            logger.info(
                f"Overall training speed: {self._timed_iters} iterations in "
                f"{datetime.timedelta(seconds=int(timed))} ({timed / self._timed_iters:.4f} s / it)"
            )
        logger.info(f"Total training time: {datetime.timedelta(seconds=int(total))}")


class LRScheduler(HookBase):
    """Records the lr used by this iteration and steps the scheduler after the optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        # The group with the most parameters represents "the" lr (bias groups may differ).
        self._best_group = max(
            range(len(optimizer.param_groups)), key=lambda i: len(optimizer.param_groups[i]["params"])
        )

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


class PeriodicCheckpointer(_FvcorePeriodicCheckpointer, HookBase):
    """Saves ``model_{iter:07d}.pth`` every ``period`` iterations, ``model_final.pth`` when
    training completes, and the last completed iteration when a signal stops training (main
    process only; the checkpointer writes atomically)."""

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        # fvcore saves model_final on the last iteration itself; leave that to after_train.
        if self.trainer.iter + 1 < self.trainer.max_iter:
            self.step(self.trainer.iter)

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.completed:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=trainer.max_iter - 1)
        elif trainer.interrupted and trainer.iter > trainer.start_iter:
            # Stopped by a signal before iteration `iter`: the state is that after `iter - 1`,
            # exactly what a periodic checkpoint there would hold, so --resume continues at `iter`.
            last = trainer.iter - 1
            self.checkpointer.save(f"{self.file_prefix}_{last:07d}", iteration=last)


class EvalHook(HookBase):
    """Runs ``eval_function()`` every ``eval_period`` iterations and after the last one, and
    puts its results (``{"bbox": {"AP": ...}, "segm": {...}}``) into the storage as
    ``bbox/AP``, ``segm/AP``, ... Every process must run it: evaluation is collective."""

    def __init__(self, eval_period: int, eval_function: Callable[[], dict[str, Any]]) -> None:
        self._period = eval_period
        self._func = eval_function

    def _do_eval(self) -> None:
        results = self._func()
        if results:
            flattened = flatten_results_dict(results)
            for k, v in flattened.items():
                try:
                    float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"Evaluation result {k!r} = {v!r} is not a number; the eval function "
                        "must return nested dicts of floats"
                    ) from e
            self.trainer.storage.put_scalars(**flattened, smoothing_hint=False)
        # Processes finish evaluation at different times; wait so the next step starts together.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Calls every writer every ``period`` iterations, on the last one, and after training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self._writers = writers
        self._period = period

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            # Runs even after an exception: whatever was measured reaches the files.
            writer.write()
            writer.close()

