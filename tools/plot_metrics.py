#!/usr/bin/env python
"""Plots a training run's ``metrics.json``: losses, learning rate and evaluation AP over
iterations, into one PNG; with several runs, each loss (and AP) in its own panel with one curve
per run, so the runs compare at a glance.

    python tools/plot_metrics.py output/quickstart/condinst_shapes/metrics.json
    python tools/plot_metrics.py RUN/metrics.json --output curves.png
    python tools/plot_metrics.py output/facade/condinst/metrics.json \
        output/facade/condinst_percep/metrics.json --labels baseline "+perceptual" \
        --output output/facade/losses.png
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


def plot_runs(runs: dict[str, list[dict]], output: str) -> list[str]:
    """One panel per loss (``total_loss`` first) and one for the evaluation AP, each with a
    curve per run (``runs``: label -> records), into ``output``; returns the panel titles."""
    data = {label: series(records) for label, records in runs.items()}
    keys = sorted({k for d in data.values() for k in d if "loss" in k},
                  key=lambda k: (k != "total_loss", k))
    ap_keys = [k for k in ("bbox/AP", "segm/AP") if any(k in d for d in data.values())]
    panels = keys + (["AP"] if ap_keys else [])
    cols = min(3, len(panels)) or 1
    rows = math.ceil(len(panels) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels):
        for i, (label, d) in enumerate(data.items()):
            color = colors[i % len(colors)]
            if panel == "AP":
                for key, style in zip(ap_keys, ("-o", "--s")):
                    if key in d:
                        ax.plot(*d[key], style, color=color, label=f"{label} {key}")
            elif panel in d:
                ax.plot(*d[panel], ".-", color=color, label=label)
        ax.set_title(panel if panel != "AP" else "evaluation AP")
        values = [v for d in data.values() if panel in d for v in d[panel][1]]
        if panel != "AP" and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # only when the curves span more than a decade
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(" vs ".join(runs))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return panels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", help="metrics.json files written by train_net.py")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: its folder)")
    parser.add_argument("--output", help="PNG to write (default: metrics.png beside the first input)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.metrics):
        parser.error(f"{len(args.labels)} --labels for {len(args.metrics)} metrics files")
    folders = [os.path.dirname(os.path.abspath(m)) for m in args.metrics]
    output = args.output or os.path.join(folders[0], "metrics.png")
    runs = {}
    for path, label in zip(args.metrics, args.labels or [os.path.basename(f) for f in folders]):
        records = load_metrics(path)
        if not records:
            raise ValueError(f"{path} holds no metrics")
        if label in runs:
            raise ValueError(f"two runs are labelled {label!r}: name them with --labels")
        runs[label] = records
    if len(runs) == 1:
        drawn = plot(next(iter(runs.values())), output, title=folders[0])
    else:
        drawn = plot_runs(runs, output)
    print(f"Wrote {output} ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
