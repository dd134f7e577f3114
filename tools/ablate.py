#!/usr/bin/env python
"""The paper's comparison in miniature, on the synthetic shapes set.

Trains and evaluates each variant once per seed, each run in its own process
(``train_net.py``'s ``main``), then prints mean ± std (sample std over seeds) of box and mask AP.

    python tools/ablate.py                         # baseline, +loss (gt), +loss (teacher); 3 seeds
    python tools/ablate.py --sweep structure       # 1,1,1,1,1 / VGG16 / VGG19 (GT targets)
    python tools/ablate.py --sweep kernel          # kernel size 1, 3, 5, 7 (GT targets)
    python tools/ablate.py --sweep init            # he / xavier / N(0, 0.01) / U[-0.01, 0.01]
    python tools/ablate.py --seeds 0 --max-iter 300 --output-dir output/ablate_short

Finished runs (``ablate_result.json`` in their folder) are reused, so an interrupted ablation
resumes where it stopped. The teacher of ``+loss (teacher)`` is the baseline run of the same seed
(its ``model_final.pth``), unless ``--teacher-weights`` names a file. Extra ``KEY VALUE`` pairs at
the end are config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

from tabulate import tabulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join("configs", "Quickstart")
PLAIN_CONFIG = os.path.join(QUICKSTART, "CondInst_shapes.yaml")
GT_CONFIG = os.path.join(QUICKSTART, "CondInst-Percep_shapes.yaml")
TEACHER_CONFIG = os.path.join(QUICKSTART, "CondInst-Percep-Teacher_shapes.yaml")
RESULT_FILE = "ablate_result.json"
METRICS = (("bbox", "AP"), ("segm", "AP"))


@dataclass
class Variant:
    name: str
    config_file: str
    opts: list[str] = field(default_factory=list)
    # Uses the baseline run of the same seed as its teacher.
    needs_teacher: bool = False


def _vgg(structure: str) -> list[str]:
    return ["MODEL.PERCEP.STRUCTURE", f"({structure})"]


SWEEPS: dict[str, list[Variant]] = {
    "target": [
        Variant("baseline", PLAIN_CONFIG),
        Variant("+loss (gt)", GT_CONFIG),
        Variant("+loss (teacher)", TEACHER_CONFIG, needs_teacher=True),
    ],
    "structure": [
        Variant("1,1,1,1,1", GT_CONFIG, _vgg("1,1,1,1,1")),
        Variant("VGG16 2,2,3,3,3", GT_CONFIG, _vgg("2,2,3,3,3")),
        Variant("VGG19 2,2,4,4,4", GT_CONFIG, _vgg("2,2,4,4,4")),
    ],
    "kernel": [
        Variant(f"kernel {k}", GT_CONFIG, ["MODEL.PERCEP.KERNEL_SIZE", str(k)]) for k in (1, 3, 5, 7)
    ],
    "init": [
        Variant("he (fan-in)", GT_CONFIG, ["MODEL.PERCEP.INIT", "he"]),
        Variant("xavier", GT_CONFIG, ["MODEL.PERCEP.INIT", "xavier"]),
        Variant(
            "N(0, 0.01)", GT_CONFIG,
            ["MODEL.PERCEP.INIT", "normal", "MODEL.PERCEP.INIT_SCALE", "0.01"],
        ),
        Variant(
            "U[-0.01, 0.01]", GT_CONFIG,
            ["MODEL.PERCEP.INIT", "uniform", "MODEL.PERCEP.INIT_SCALE", "0.01"],
        ),
    ],
}


def run_dir(output_dir: str, variant: Variant, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in variant.name).strip("_")
    return os.path.join(output_dir, slug, f"seed_{seed}")


def plan(args: argparse.Namespace) -> list[tuple[Variant, int, list[str]]]:
    """(variant, seed, train_net command line) per run, baselines first (they are teachers)."""
    variants = SWEEPS[args.sweep]
    runs = []
    for variant in variants:
        for seed in args.seeds:
            opts = ["SEED", str(seed), "OUTPUT_DIR", run_dir(args.output_dir, variant, seed)]
            if args.max_iter:
                steps = f"({int(args.max_iter * 5 / 6)},)"
                opts += ["SOLVER.MAX_ITER", str(args.max_iter), "SOLVER.STEPS", steps,
                         "SOLVER.CHECKPOINT_PERIOD", str(args.max_iter)]
            if variant.needs_teacher:
                teacher = args.teacher_weights or os.path.join(
                    run_dir(args.output_dir, SWEEPS["target"][0], seed), "model_final.pth"
                )
                opts += ["MODEL.TEACHER.WEIGHTS", teacher]
            cmd = ["--config-file", variant.config_file, *variant.opts, *opts, *args.opts]
            runs.append((variant, seed, cmd))
    return runs


def read_result(folder: str) -> dict[str, float] | None:
    """``{"bbox/AP": .., "segm/AP": ..}`` of a finished run, or None if it has not finished."""
    path = os.path.join(folder, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    try:
        return {f"{task}/{m}": float(data[task][m]) for task, m in METRICS}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: no {METRICS} in the evaluation results ({e!r})") from e


def aggregate(results: dict[str, list[dict[str, float]]]) -> list[list]:
    """Rows ``[variant, n, box mean, box std, mask mean, mask std]``; std is the sample
    standard deviation over seeds (NaN for a single seed)."""
    rows = []
    for name, runs in results.items():
        row: list = [name, len(runs)]
        for task, m in METRICS:
            values = [r[f"{task}/{m}"] for r in runs]
            mean = statistics.fmean(values) if values else math.nan
            std = statistics.stdev(values) if len(values) > 1 else math.nan
            row += [mean, std]
        rows.append(row)
    return rows


def format_table(rows: list[list]) -> str:
    def pm(mean: float, std: float) -> str:
        if math.isnan(mean):
            return "–"
        return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"

    table = [[name, n, pm(r[0], r[1]), pm(r[2], r[3])] for name, n, *r in rows]
    return tabulate(table, headers=["variant", "seeds", "box AP", "mask AP"], tablefmt="pipe")


def run_one(argv: list[str]) -> None:
    """In a child process: train and evaluate with train_net.py's main, save the results."""
    sys.path.insert(0, REPO)
    import train_net
    from condinst_percep.checkpoint import atomic_write
    from condinst_percep.engine import default_argument_parser

    args = default_argument_parser().parse_args(argv)
    results = train_net.main(args)
    cfg_out = args.opts[args.opts.index("OUTPUT_DIR") + 1]
    atomic_write(os.path.join(cfg_out, RESULT_FILE), lambda f: json.dump(results, f), mode="w")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="target")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, default=0,
                        help="shorter runs (STEPS at 5/6 of it); 0: the quickstart's schedule")
    parser.add_argument("--output-dir", default=os.path.join("output", "ablate"))
    parser.add_argument("--teacher-weights", default="",
                        help="teacher for '+loss (teacher)'; default: that seed's baseline")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    # Children run in the repository root (the configs' relative paths); results stay put.
    args.output_dir = os.path.abspath(args.output_dir)
    if args.teacher_weights:
        args.teacher_weights = os.path.abspath(args.teacher_weights)
    return args


def main(argv: list[str] | None = None) -> list[list]:
    args = parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in SWEEPS[args.sweep]}
    for variant, seed, cmd in plan(args):
        folder = run_dir(args.output_dir, variant, seed)
        done = read_result(folder)
        print(("[reused] " if done else "") + "train_net.py " + " ".join(cmd), flush=True)
        if done is None and not args.dry_run:
            subprocess.run([sys.executable, __file__, "--run-one", *cmd], check=True, cwd=REPO)
            done = read_result(folder)
        if done is not None:
            results[variant.name].append(done)
    rows = aggregate(results)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run-one":
        run_one(sys.argv[2:])
    else:
        main()
