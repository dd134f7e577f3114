"""The training loop: hooks around an iteration, and the iteration itself (forward with optional
autocast, backward with optional grad scaling, loss/gradient/stop check in one host read,
clipping, optimizer step)."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from ..utils import comm
from ..utils.events import EventStorage, get_event_storage
from .defaults import iteration_seed, seed_all_rng

__all__ = ["HookBase", "StopSignals", "TrainerBase", "SimpleTrainer", "AMP_DTYPES"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class HookBase:
    """Called by the trainer at fixed points; ``self.trainer`` is set when registered.

    ``after_train`` also runs when training raises or is stopped by a signal;
    ``self.trainer.completed`` tells whether the last iteration finished (final checkpoints and
    evaluations only happen then), ``self.trainer.interrupted`` whether a signal stopped it.
    """

    trainer: "TrainerBase"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class StopSignals:
    """While active, SIGTERM and SIGINT only request a stop (``signum`` is set); the trainer
    finishes the current iteration, checkpoints and exits. A second SIGINT interrupts at once.

    Handlers can only be installed from the main thread; elsewhere this does nothing.
    ``agreed`` is for trainers whose processes must stop together: whether any process had a
    signal at the last point where they exchanged their flags.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.agreed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logging.getLogger(__name__).warning(
            f"Received {signal.Signals(signum).name}: stopping after this iteration and "
            "writing a checkpoint (press Ctrl-C again to abort at once)"
        )

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class TrainerBase:
    """Runs ``run_step`` for iterations ``[start_iter, max_iter)`` between registered hooks.

    After training, ``completed`` tells whether the last iteration ran; ``interrupted`` whether
    a SIGTERM/SIGINT stopped training early, in which case ``train`` raises ``SystemExit`` with
    the shell's code for that signal (128 + signum) once the hooks have checkpointed.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.completed = False
        self.interrupted = False
        self.signals = StopSignals()
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for hook in hooks:
            if hook is None:
                continue
            # A weak reference avoids a cycle trainer -> hook -> trainer.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger = logging.getLogger(__name__)
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.completed = self.interrupted = False
        self.signals = StopSignals()
        with EventStorage(start_iter) as self.storage, self.signals:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    if self.interrupted:
                        break
                    self.after_step()
                else:
                    self.iter += 1
                    self.completed = True
            except Exception:
                logger.exception(f"Exception during training at iteration {self.iter}:")
                raise
            finally:
                self.after_train()
        if self.interrupted:
            logger.warning(f"Training stopped by a signal before iteration {self.iter}")
            raise SystemExit(128 + (self.signals.signum or signal.SIGTERM))

    def stop_requested(self) -> bool:
        """Whether a stop signal was received (by any process, in subclasses that agree)."""
        return self.signals.signum is not None

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One iteration = one batch from ``data_loader`` through ``model``, the sum of its loss
    dict backpropagated, and one ``optimizer`` step.

    The host waits for the device once per iteration (besides the model's own, inherent
    points and, with fp16, the grad scaler's): after backward, the losses, a flag "every
    gradient is finite" and the local stop flag are all-reduced as one tensor and read
    together. A non-finite value raises FloatingPointError before the step, on every process
    at the same iteration; a stop flag takes effect when the next iteration starts.

    Args:
        model: returns a dict of scalar losses in training mode (possibly DDP-wrapped).
        data_loader: an iterable of batches (lists of dicts), infinite for training.
        optimizer: any torch optimizer.
        amp_dtype: None for fp32; ``torch.float16`` runs the forward in autocast and scales the
            loss with a GradScaler (CUDA only); ``torch.bfloat16`` runs it in autocast without
            scaling (CPU or CUDA).
        grad_clipper: applied to the trainable parameters' (unscaled) gradients before the step.
        seed: if given, python's, numpy's and torch's global generators are reseeded at the
            start of every iteration with ``iteration_seed(seed, iteration, rank)``. What an
            iteration draws from them (e.g. ``MODEL.CONDINST.MAX_PROPOSALS``' random sample)
            then depends on its number, not on how many iterations this process ran before
            it, so a run resumed from a checkpoint draws what the uninterrupted run drew.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[list[dict[str, Any]]],
        optimizer: torch.optim.Optimizer,
        amp_dtype: torch.dtype | None = None,
        grad_clipper: Callable[[Iterable[torch.Tensor]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.seed = seed
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter: Iterator[list[dict[str, Any]]] | None = None
        self.optimizer = optimizer
        self.grad_clipper = grad_clipper
        self.device_type = _model_device_type(model)
        if amp_dtype == torch.float16 and self.device_type != "cuda":
            raise ValueError(
                "SOLVER.AMP.DTYPE 'float16' needs a CUDA device (a gradient scaler on "
                f"{self.device_type} is not supported); use 'bfloat16' on CPU"
            )
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES.values():
            raise ValueError(
                f"amp_dtype must be None or one of {list(AMP_DTYPES.values())}, got {amp_dtype}"
            )
        self.amp_dtype = amp_dtype
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    @property
    def data_loader_iter(self) -> Iterator[list[dict[str, Any]]]:
        # Created on first use, so that a resumed run builds its loader before iterating.
        if self._data_loader_iter is None:
            self._data_loader_iter = iter(self.data_loader)
        return self._data_loader_iter

    def stop_requested(self) -> bool:
        # All processes must stop at the same iteration, or the others would wait forever in
        # the next collective: they agree on the flags exchanged in the last iteration's read.
        if comm.get_world_size() == 1:
            return super().stop_requested()
        return self.signals.agreed

    def run_step(self) -> None:
        assert self.model.training, "SimpleTrainer: the model was switched to eval mode"
        if self.stop_requested():
            self.interrupted = True
            return
        if self.seed is not None:
            seed_all_rng(iteration_seed(self.seed, self.iter, comm.get_rank()))
        start = time.perf_counter()
        data = next(self.data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(
            device_type=self.device_type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loss_dict = self.model(data)
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        # Backward runs before the checks: on a non-finite loss it only writes gradients that
        # no step will use, and every process runs it, so none waits alone in DDP's all-reduce.
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        reduced = self._reduce_and_check(loss_dict)

        if self.grad_scaler is not None:
            if self.grad_clipper is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.grad_clipper(self._trainable_params())
            # Reads its found-inf flag on the host and skips the step on overflow.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            if self.grad_clipper is not None:
                self.grad_clipper(self._trainable_params())
            self.optimizer.step()
        self._write_metrics(reduced, data_time)

    def _reduce_and_check(self, loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        """The iteration's one host read: the losses, whether every gradient is finite and the
        local stop flag, averaged over processes in one all-reduce and read with one
        ``tolist``. Records the agreed stop flag; returns the averaged losses.

        Raises FloatingPointError, before the step, if a loss is non-finite (naming it and the
        iteration), else if a gradient is non-finite although every loss was finite (naming
        the parameters). DDP has averaged the gradients and this averages the rest, so every
        process raises at the same iteration. Without a gradient scaler (fp16 skips such steps
        itself) a non-finite gradient would write NaN or inf into the weights and the next
        checkpoint; the inf-norm used for the check cannot overflow and propagates NaN.
        """
        names = sorted(loss_dict)
        values = [loss_dict[k].detach() for k in names]
        device = values[0].device
        grads = [p.grad for p in self._trainable_params()]
        if self.grad_scaler is None and grads:
            norm = torch.nn.utils.get_total_norm(grads, float("inf"))
            grads_finite = torch.isfinite(norm).to(device, torch.float32)
        else:
            grads_finite = torch.ones((), device=device)
        stop = torch.full((), float(self.signals.signum is not None), device=device)
        *loss_values, grads_ok, stop_mean = comm.reduce_mean(
            torch.stack([*values, grads_finite, stop])
        ).tolist()
        self.signals.agreed = stop_mean > 0
        reduced = dict(zip(names, loss_values))
        bad = [k for k, v in reduced.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"Loss became non-finite at iteration {self.iter}: "
                + ", ".join(f"{k} = {reduced[k]}" for k in bad)
                + f" (all losses: {reduced})"
            )
        if grads_ok < 1:
            self._raise_non_finite_gradients()
        return reduced

    def _raise_non_finite_gradients(self) -> None:
        names = {p: n for n, p in getattr(self.model, "module", self.model).named_parameters()}
        bad = [
            names.get(p, "?")
            for p in self._trainable_params()
            if not bool(torch.isfinite(p.grad).all())
        ]
        raise FloatingPointError(
            f"Gradient became non-finite at iteration {self.iter} although every loss was "
            f"finite, in {len(bad)} parameter(s): {', '.join(bad[:5])}"
            + (", ..." if len(bad) > 5 else "")
            + "; the step was not taken, so the weights and checkpoints stay finite"
        )

    def _trainable_params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _write_metrics(self, reduced: dict[str, float], data_time: float) -> None:
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", data_time)
        storage.put_scalar("total_loss", sum(reduced.values()))
        storage.put_scalars(**reduced)


def _model_device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"
