"""The evaluator interface and the inference loop that drives it."""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from ..utils import comm

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates (inputs, outputs) pairs with ``process`` and scores them with ``evaluate``."""

    def reset(self) -> None:
        """Prepares for a new round of evaluation."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        raise NotImplementedError

    def evaluate(self) -> OrderedDict:
        """Returns ``{task: {metric: value}}``; non-main processes may return an empty dict."""
        raise NotImplementedError


def inference_on_dataset(
    model: nn.Module, data_loader: Iterable[list[dict]], evaluator: DatasetEvaluator
) -> OrderedDict:
    """Runs ``model`` in eval mode without gradients over ``data_loader``, feeding every batch
    and its outputs to ``evaluator``; logs throughput and returns ``evaluator.evaluate()``.

    The model's train/eval mode is restored afterwards.
    """
    num_devices = comm.get_world_size()
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    logger.info(f"Start inference on {total} batches")
    evaluator.reset()
    num_warmup = min(5, total - 1) if total else 0
    start_time = time.perf_counter()
    compute_time = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx, inputs in enumerate(data_loader):
                if not inputs:
                    # Every image of the batch was skipped as bad data (the loader warned).
                    continue
                if idx == num_warmup:
                    start_time, compute_time = time.perf_counter(), 0.0
                compute_start = time.perf_counter()
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                compute_time += time.perf_counter() - compute_start
                evaluator.process(inputs, outputs)
                if total and (idx + 1) % max(1, total // 10) == 0:
                    done = idx + 1 - num_warmup
                    per_iter = (time.perf_counter() - start_time) / max(1, done)
                    eta = datetime.timedelta(seconds=int(per_iter * (total - idx - 1)))
                    logger.info(f"Inference done {idx + 1}/{total}. {per_iter:.4f} s/iter. ETA={eta}")
    finally:
        model.train(was_training)
    total_time = time.perf_counter() - start_time
    timed = max(1, (total or 0) - num_warmup)
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=int(total_time))} "
        f"({total_time / timed:.6f} s / iter per device, on {num_devices} devices); "
        f"pure compute time: {compute_time / timed:.6f} s / iter per device"
    )
    results = evaluator.evaluate()
    return results if results is not None else OrderedDict()
