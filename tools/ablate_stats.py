"""Paired-seed statistics and the markdown table of tools/ablate.py.

Each variant ran once per seed; runs of the same seed are paired (same data order, same
initialisation apart from what the variant changes). Per metric: mean ± sample sd over seeds,
and for every variant against the baseline the mean paired difference, its standard error
(sd of the differences / sqrt(n)) and the two-sided p-value of the paired t-test
(``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from tabulate import tabulate

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = (("bbox", "box"), ("segm", "mask"))


@dataclass
class Paired:
    n: int
    mean: float
    se: float
    p: float


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd; NaN where undefined (no value / one value)."""
    values = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def paired_difference(variant: dict[int, float], baseline: dict[int, float]) -> Paired:
    """``variant - baseline`` over the seeds both have (NaN-free)."""
    seeds = sorted(s for s in variant if s in baseline
                   and not math.isnan(variant[s]) and not math.isnan(baseline[s]))
    diffs = [variant[s] - baseline[s] for s in seeds]
    if len(diffs) < 2:
        return Paired(len(diffs), diffs[0] if diffs else math.nan, math.nan, math.nan)
    from scipy.stats import ttest_rel  # a tool dependency: pip install scipy

    sd, mean = statistics.stdev(diffs), statistics.fmean(diffs)
    if sd == 0:  # the t statistic is 0/0 or ±inf
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(ttest_rel([variant[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    return Paired(len(diffs), mean, sd / math.sqrt(len(diffs)), p)


def metric_keys(classes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(result key, row label) for the six COCO APs of box and mask, then per-class AP."""
    keys = [(f"{task}/{m}", f"{label} {m}") for task, label in TASKS for m in COCO_METRICS]
    keys += [(f"{task}/AP-{c}", f"{label} AP {c}") for c in classes for task, label in TASKS]
    return keys


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def _diff(d: Paired) -> str:
    if math.isnan(d.mean):
        return "–"
    if math.isnan(d.se):
        return f"{d.mean:+.2f}"
    return f"{d.mean:+.2f} ± {d.se:.2f} (p={d.p:.2g})"


def paired_table(
    results: dict[str, dict[int, dict[str, float]]],
    baseline: str,
    classes: tuple[str, ...] = (),
) -> str:
    """Markdown table: a row per metric; per variant its mean ± sd, and beside every other
    variant its paired difference to ``baseline`` ± SE (p). ``results[variant][seed][key]``."""
    variants = list(results)
    headers = ["metric"]
    for v in variants:
        headers.append(f"{v} (n={len(results[v])})")
        if v != baseline:
            headers.append(f"Δ {v} − {baseline}")
    rows = []
    for key, label in metric_keys(classes):
        row = [label]
        base = {s: r.get(key, math.nan) for s, r in results[baseline].items()}
        for v in variants:
            values = {s: r.get(key, math.nan) for s, r in results[v].items()}
            row.append(_pm(*mean_sd(list(values.values()))))
            if v != baseline:
                row.append(_diff(paired_difference(values, base)))
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)
