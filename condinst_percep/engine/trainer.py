"""``Trainer``: everything ``train_net.py`` needs, built from a config (detectron2's
``DefaultTrainer``): model, optimizer, schedule, AMP, DDP, checkpointing, hooks, evaluation."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CheckpointMismatchError, Checkpointer
from ..data import build_detection_test_loader, build_detection_train_loader
from ..data.build import images_per_process
from ..data.classes import check_num_classes
from ..evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from ..evaluation.coco_evaluation import COCO_MAX_DETS
from ..modeling import build_model
from ..utils import comm
from ..utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from . import hooks
from .solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
from .train_loop import AMP_DTYPES, HookBase, SimpleTrainer
from .validate import validate_cfg

__all__ = ["Trainer", "auto_scale_workers", "create_ddp_model", "default_writers"]

logger = logging.getLogger(__name__)

WRITE_PERIOD = 20


def auto_scale_workers(cfg, num_workers: int):
    """When ``SOLVER.REFERENCE_WORLD_SIZE`` > 0 and differs from ``num_workers``, scales the
    batch size and lr by ``num_workers / REFERENCE_WORLD_SIZE`` and the iteration counts by its
    inverse (linear scaling rule, detectron2). Returns a new config; the input is unchanged."""
    old = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if old == 0 or old == num_workers:
        return cfg
    if cfg.SOLVER.IMS_PER_BATCH % old != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is not divisible by "
            f"SOLVER.REFERENCE_WORLD_SIZE = {old}"
        )
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    scale = num_workers / old
    cfg.SOLVER.IMS_PER_BATCH = int(round(cfg.SOLVER.IMS_PER_BATCH * scale))
    cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * scale
    cfg.SOLVER.MAX_ITER = int(round(cfg.SOLVER.MAX_ITER / scale))
    cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS / scale))
    cfg.SOLVER.STEPS = tuple(int(round(s / scale)) for s in cfg.SOLVER.STEPS)
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
    cfg.SOLVER.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / scale))
    cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
    logger.info(
        f"Auto-scaling the config to {num_workers} workers: IMS_PER_BATCH="
        f"{cfg.SOLVER.IMS_PER_BATCH}, BASE_LR={cfg.SOLVER.BASE_LR}, MAX_ITER={cfg.SOLVER.MAX_ITER}"
    )
    if frozen:
        cfg.freeze()
    return cfg


def create_ddp_model(model: nn.Module) -> nn.Module:
    """Wraps ``model`` in DDP when more than one process runs; returns it unchanged otherwise.

    Parameters and buffers are broadcast from rank 0 once, at wrapping, when every buffer still
    holds the same initial value on each process; after that buffers are not synced (the mask
    branch's BN statistics stay per process, as with AdelaiDet's ``broadcast_buffers=False``),
    and every parameter is expected to get a gradient at every step.
    """
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    # forward_sync_buffers, not broadcast_buffers: torch deprecates the latter (FutureWarning).
    return DistributedDataParallel(
        model, device_ids=device_ids, forward_sync_buffers=False, find_unused_parameters=False
    )


def default_writers(output_dir: str, max_iter: int) -> list[EventWriter]:
    """Console, ``output_dir/metrics.json`` and TensorBoard events in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter, window_size=WRITE_PERIOD),
        JSONWriter(os.path.join(output_dir, "metrics.json"), window_size=WRITE_PERIOD),
        TensorboardXWriter(output_dir, window_size=WRITE_PERIOD),
    ]


def _amp_dtype(cfg) -> torch.dtype | None:
    return AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None


class Trainer(SimpleTrainer):
    """Builds and trains the model described by ``cfg``.

    Typical use::

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    ``SOLVER.IMS_PER_BATCH`` is the batch over all processes; each process loads
    ``IMS_PER_BATCH / world_size`` images. The training data loader is built in ``train()``,
    after ``resume_or_load``, so that a resumed run continues the data stream where the
    checkpointed run stopped; with ``SEED >= 0`` each iteration's random draws are seeded from
    its number (see ``SimpleTrainer``'s ``seed``), so the resumed run is the uninterrupted one,
    bit for bit.

    The config is checked once, by :func:`validate_cfg` (and once more if the linear scaling
    rule of :func:`auto_scale_workers` made a new one); the builders are told so.
    """

    def __init__(self, cfg) -> None:
        validate_cfg(cfg)
        scaled = auto_scale_workers(cfg, comm.get_world_size())
        if scaled is not cfg:
            validate_cfg(scaled)
        cfg = scaled
        images_per_process(cfg)  # refused here, before the model is built, not at train()
        model = build_model(cfg, checked=True)
        logger.info(f"Model:\n{model}")
        optimizer = build_optimizer(cfg, model, checked=True)
        super().__init__(
            create_ddp_model(model),
            data_loader=[],  # replaced in train(), once the start iteration is known
            optimizer=optimizer,
            amp_dtype=_amp_dtype(cfg),
            grad_clipper=build_gradient_clipper(cfg, checked=True),
            # A random SEED (< 0) is not kept, so a resumed run cannot redraw its stream.
            seed=cfg.SEED if cfg.SEED >= 0 else None,
        )
        self.cfg = cfg
        self.scheduler = build_lr_scheduler(cfg, optimizer, checked=True)
        checkpointables: dict[str, Any] = {"optimizer": optimizer, "scheduler": self.scheduler}
        if self.grad_scaler is not None:
            checkpointables["grad_scaler"] = self.grad_scaler
        self.checkpointer = Checkpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, save_to_disk=comm.is_main_process(), **checkpointables
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.last_eval_results: dict[str, Any] = {}
        self.register_hooks(self.build_hooks())

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint`` in OUTPUT_DIR: restores model, optimizer,
        scheduler (and grad scaler) and continues after the saved iteration. Otherwise loads
        only the model weights from ``MODEL.WEIGHTS`` (if set) and starts at iteration 0."""
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self._check_resumed_fully(checkpoint)
            self.start_iter = checkpoint["iteration"] + 1
        else:
            self.start_iter = 0

    def _check_resumed_fully(self, checkpoint: dict[str, Any]) -> None:
        # Fine-tuning may load part of a model; continuing a run from its own checkpoint must
        # restore all of it, or training would silently go on from a different state.
        path = self.checkpointer.get_checkpoint_file()
        report = self.checkpointer.last_report
        problems = []
        if report is not None:
            problems += [f"{k}: checkpoint {c} vs model {m}" for k, (c, m) in report.mismatched.items()]
            problems += [f"{k}: missing from the checkpoint" for k in report.missing]
            problems += [f"{k}: not in the model" for k in report.unexpected]
        loaded = set(self.checkpointer.loaded_checkpointables) | set(checkpoint)
        problems += [
            f"{key}: missing from the checkpoint"
            for key in ("iteration", *self.checkpointer.checkpointables)
            if key not in loaded
        ]
        if problems:
            raise CheckpointMismatchError(
                f"--resume: '{path}' (named by {self.cfg.OUTPUT_DIR}/last_checkpoint) does not "
                f"hold this run's full state, so it cannot be continued ({len(problems)} "
                f"problem(s), e.g. {'; '.join(problems[:5])}). Was the config changed? Remove "
                "--resume to start afresh, or use another OUTPUT_DIR"
            )

    def build_hooks(self) -> list[HookBase | None]:
        cfg = self.cfg
        main = comm.is_main_process()
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD) if main else None,
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate),
            hooks.PeriodicWriter(default_writers(cfg.OUTPUT_DIR, self.max_iter), WRITE_PERIOD)
            if main
            else None,
        ]

    def train(self) -> dict[str, Any]:  # type: ignore[override]
        """Trains from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last evaluation."""
        self.data_loader = build_detection_train_loader(self.cfg, start_iter=self.start_iter)
        # Before the first iteration, and for the test sets too: a mismatch found at the end
        # of training would have wasted it.
        check_num_classes(
            self.cfg.MODEL.FCOS.NUM_CLASSES,
            [*self.cfg.DATASETS.TRAIN, *self.cfg.DATASETS.TEST],
            self.cfg.DATALOADER.BAD_DATA_POLICY,
        )
        self._data_loader_iter = None
        super().train(self.start_iter, self.max_iter)
        return self.last_eval_results

    def _evaluate(self) -> dict[str, Any]:
        self.last_eval_results = self.test(self.cfg, self.unwrapped_model)
        return self.last_eval_results

    @classmethod
    def test(cls, cfg, model: nn.Module) -> dict[str, Any]:
        """Evaluates ``model`` on every dataset in ``DATASETS.TEST`` with the COCO evaluator.

        Returns ``{"bbox": {"AP": ..}, "segm": {..}}`` for one dataset, else a dict keyed by
        dataset name. Every process must call it; predictions are gathered to the main process.
        """
        results: OrderedDict[str, Any] = OrderedDict()
        for name in cfg.DATASETS.TEST:
            data_loader = build_detection_test_loader(cfg, name)
            check_num_classes(cfg.MODEL.FCOS.NUM_CLASSES, [name], cfg.DATALOADER.BAD_DATA_POLICY)
            # A model keeping more than COCO's 100 detections is scored on all of them.
            evaluator = COCOEvaluator(
                name,
                output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name),
                max_dets_per_image=max(COCO_MAX_DETS, cfg.MODEL.FCOS.POST_NMS_TOPK_TEST),
            )
            results[name] = inference_on_dataset(model, data_loader, evaluator)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
        if len(results) == 1:
            return next(iter(results.values()))
        return dict(results)
