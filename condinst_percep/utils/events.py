"""Training metrics: an event storage filled by the trainer and hooks, and the writers that
periodically send it to the console, ``metrics.json`` and TensorBoard (detectron2's design).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import resource
from collections import defaultdict
from typing import Any

import torch
from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE_STACK: list["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The storage of the innermost ``with EventStorage(...)`` block; raises outside one."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context"
        )
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Holds the history of named scalars, each tagged with the iteration it was put at.

    ``smoothing_hint=True`` asks writers to report the median over their window (losses, times);
    ``False`` reports the latest value (lr, AP).
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._iter = start_iter

    def put_scalar(self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True) -> None:
        value = float(value)
        self._history[name].update(value, self._iter)
        self._latest_scalars[name] = (value, self._iter)
        existing = self._smoothing_hints.get(name)
        if existing is not None and existing != smoothing_hint:
            raise ValueError(f"Scalar {name!r} was put with different smoothing_hint values")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, **kwargs: float) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"No history metric available for {name!r}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        """name -> (latest value, iteration it was put at)."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like :meth:`latest`, with smoothed scalars replaced by their median over the window."""
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            result[name] = (value, itr)
        return result

    def step(self) -> None:
        self._iter += 1

    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def max_memory_mb() -> float:
    """Peak memory of this process in MiB: CUDA memory allocated by torch on a GPU run,
    resident set size (ru_maxrss) on a CPU-only run."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class CommonMetricPrinter(EventWriter):
    """Prints ETA, iteration, losses, times, lr and peak memory to the log.

    It also puts ``eta_seconds`` and ``max_mem`` into the storage, so writers placed after it
    (JSON, TensorBoard) record the same numbers the console shows.
    """

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self.logger = logging.getLogger("condinst_percep.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            # After training ends the storage iteration is one past the last one; the final
            # evaluation results are written by the other writers, nothing to print here.
            return
        try:
            time_buffer = storage.history("time")
        except KeyError:
            time_buffer = None
        eta_string = "N/A"
        if time_buffer is not None and len(time_buffer.values()) > 0:
            eta_seconds = time_buffer.median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            eta_string = str(datetime.timedelta(seconds=int(eta_seconds)))
        max_mem = max_memory_mb()
        storage.put_scalar("max_mem", max_mem, smoothing_hint=False)

        def median(name: str) -> str:
            return f"{storage.history(name).median(self._window_size):.4f}"

        histories = storage.histories()
        losses = "  ".join(
            f"{name}: {median(name)}" for name in histories if "loss" in name
        )
        parts = [f"eta: {eta_string}", f"iter: {iteration}", losses]
        if "time" in histories:
            parts.append(f"time: {median('time')}")
        if "data_time" in histories:
            parts.append(f"data_time: {median('data_time')}")
        if "lr" in histories:
            parts.append(f"lr: {storage.history('lr').latest():.5g}")
        parts.append(f"max_mem: {max_mem:.0f}M")
        self.logger.info("  ".join(p for p in parts if p))


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration that has new scalars to ``json_file``."""

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._file = open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        to_save: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:
                continue
            to_save[itr][name] = value
        if to_save:
            self._last_write = max(to_save)
        for itr, scalars in sorted(to_save.items()):
            scalars["iteration"] = itr
            self._file.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class TensorboardXWriter(EventWriter):
    """Writes the new scalars to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str, window_size: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._window_size = window_size
        self._writer = SummaryWriter(log_dir)
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        new_last_write = self._last_write
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(name, value, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
