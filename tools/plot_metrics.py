#!/usr/bin/env python
"""Plots a training run's ``metrics.json``: losses, learning rate and evaluation AP over
iterations, into one PNG.

    python tools/plot_metrics.py output/quickstart/condinst_shapes/metrics.json
    python tools/plot_metrics.py RUN/metrics.json --output curves.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP", "segm/AP50", "segm/AP75")


def load_metrics(path: str) -> list[dict]:
    """The JSON objects of ``path``, one per line; a malformed line is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not a JSON object: {e}") from e
            if not isinstance(record, dict) or "iteration" not in record:
                raise ValueError(f"{path}:{lineno} has no 'iteration' key")
            records.append(record)
    return records


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (iterations, values); a resumed run that rewrote iterations keeps the last."""
    by_key: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                by_key[key][int(record["iteration"])] = float(value)
    return {k: (sorted(v), [v[i] for i in sorted(v)]) for k, v in by_key.items()}


def plot(records: list[dict], output: str, title: str = "") -> list[str]:
    """Draws the figure into ``output``; returns the names of the curves drawn."""
    data = series(records)
    loss_keys = sorted(k for k in data if "loss" in k)
    ap_keys = [k for k in AP_KEYS if k in data]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for key in loss_keys:
        axes[0].plot(*data[key], label=key, linewidth=2 if key == "total_loss" else 1)
    axes[0].set_title("losses (median over 20 iterations)")
    if loss_keys and all(v > 0 for k in loss_keys for v in data[k][1]):
        axes[0].set_yscale("log")
    if "lr" in data:
        axes[1].plot(*data["lr"], label="lr")
    axes[1].set_title("learning rate")
    for key in ap_keys:
        axes[2].plot(*data[key], marker="o", label=key)
    axes[2].set_title("evaluation AP")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return loss_keys + (["lr"] if "lr" in data else []) + ap_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a metrics.json written by train_net.py")
    parser.add_argument("--output", help="PNG to write (default: metrics.png beside the input)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "metrics.png")
    records = load_metrics(args.metrics)
    if not records:
        raise ValueError(f"{args.metrics} holds no metrics")
    drawn = plot(records, output, title=os.path.dirname(os.path.abspath(args.metrics)))
    print(f"Wrote {output} ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
