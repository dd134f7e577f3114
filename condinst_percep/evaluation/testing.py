"""Formatting evaluation results for logs and ``metrics.json``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def flatten_results_dict(results: Mapping) -> dict[str, float]:
    """``{"bbox": {"AP": 1.0}}`` -> ``{"bbox/AP": 1.0}`` (nested to any depth)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def print_csv_format(results: Mapping) -> None:
    """Logs each task's main metrics as two comma-separated lines, easy to paste into a sheet."""
    for task, metrics in results.items():
        main = [(k, v) for k, v in metrics.items() if "-" not in k]
        logger.info(f"copypaste: Task: {task}")
        logger.info("copypaste: " + ",".join(k for k, _ in main))
        logger.info("copypaste: " + ",".join(f"{v:.4f}" for _, v in main))
