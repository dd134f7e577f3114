#!/usr/bin/env python
"""The paper's comparison in miniature: on the synthetic shapes set, and on the real facade set.

Trains and evaluates each variant once per seed, each run in its own process
(``train_net.py``'s ``main``), then prints mean ± std (sample std over seeds) of box and mask AP.

    python tools/ablate.py                         # baseline, +loss (gt), +loss (teacher); 3 seeds
    python tools/ablate.py --sweep structure       # 1,1,1,1,1 / VGG16 / VGG19 (GT targets)
    python tools/ablate.py --sweep kernel          # kernel size 1, 3, 5, 7 (GT targets)
    python tools/ablate.py --sweep init            # he / xavier / N(0, 0.01) / U[-0.01, 0.01]
    python tools/ablate.py --seeds 0 --max-iter 300 --output-dir output/ablate_short
    python tools/ablate.py --sweep facade --seeds 0 1 2 3 4 --output-dir output/ablate_facade \
        --write-docs docs/results.md               # configs/Facade, scored on test
    python tools/ablate.py --sweep boxinst --seeds 0 1 2 3 4 --output-dir output/ablate_boxinst \
        --write-docs docs/results.md               # BoxInst against BoxInst + loss (teacher)
    python tools/ablate.py --sweep facade --seeds 0 1 2 3 4 --jobs 2     # two runs at a time
    python tools/ablate.py --seeds 0 1 2 3 --gpus 0 1 2 3 MODEL.DEVICE cuda  # one run per GPU

Finished runs (``ablate_result.json`` in their folder) are reused, so an interrupted ablation
resumes where it stopped; a run interrupted in training continues from its last checkpoint
(``train_net.py --resume``, bit for bit the uninterrupted run), but only under the config it
started with (its ``config.yaml``). A finished run is reused as it is: delete its folder after
changing its config. ``--jobs N`` / ``--gpus ...`` run several at once (tools/ablate_jobs.py), a
student starting once the teacher it needs has finished. The teacher of ``+loss (teacher)`` is
the baseline run of the same seed (its ``model_final.pth``), unless ``--teacher-weights`` names
a file; in the facade sweep it is one run of the teacher config (the baseline trained twice as
long, ``--teacher-seed``), trained first; in the boxinst sweep one BoxInst run at 3x the
schedule, trained first likewise. The facade runs select nothing on test: they train with valid
as DATASETS.TEST, then each finished model is scored once on test (``<run>/test/``), and the
table (all six COCO APs of box and mask, per-class AP of the frequent classes, paired
differences with standard error and p-value, see tools/ablate_stats.py) is of the test scores.
Extra ``KEY VALUE`` pairs at the end are config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field

from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_jobs import Step, Task, run_tasks  # noqa: E402
from ablate_stats import paired_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join("configs", "Quickstart")
PLAIN_CONFIG = os.path.join(QUICKSTART, "CondInst_shapes.yaml")
GT_CONFIG = os.path.join(QUICKSTART, "CondInst-Percep_shapes.yaml")
TEACHER_CONFIG = os.path.join(QUICKSTART, "CondInst-Percep-Teacher_shapes.yaml")
BOXINST_CONFIG = os.path.join(QUICKSTART, "BoxInst_shapes.yaml")
RESULT_FILE = "ablate_result.json"
METRICS = (("bbox", "AP"), ("segm", "AP"))
FACADE = os.path.join("configs", "Facade")
FACADE_TEST = "coco:datasets/facade/test/_annotations.coco.json:datasets/facade/test"
# The facade classes with the most test instances (1999, 328, 167 of 2842).
FACADE_CLASSES = ("window", "balcony-fence", "vegetation")

def docs_markers(sweep: str) -> tuple[str, str]:
    """The comments around the section of a results file that ``--write-docs`` fills."""
    return f"<!-- ablate --sweep {sweep}: begin -->", f"<!-- ablate --sweep {sweep}: end -->"


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
    "facade": [
        Variant("baseline", os.path.join(FACADE, "CondInst_facade.yaml")),
        Variant("+loss (gt)", os.path.join(FACADE, "CondInst-Percep_facade.yaml")),
        Variant("+loss (teacher)", os.path.join(FACADE, "CondInst-Percep-Teacher_facade.yaml"),
                needs_teacher=True),
    ],
    # Box-only training on both sides: no ground-truth mask reaches either model or the teacher.
    "boxinst": [
        Variant("BoxInst", BOXINST_CONFIG),
        Variant("+loss (teacher)", os.path.join(QUICKSTART, "BoxInst-Percep-Teacher_shapes.yaml"),
                needs_teacher=True),
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


# Sweeps whose teacher is one run of its own config (not the baseline of each seed).
TEACHERS = {
    "facade": Variant("teacher", os.path.join(FACADE, "CondInst-Teacher_facade.yaml")),
    # The quickstart schedule trained 3x as long, as the CondInst teacher-3x run in docs/results.md.
    "boxinst": Variant("teacher 3x", BOXINST_CONFIG,
                       ["SOLVER.MAX_ITER", "3000", "SOLVER.STEPS", "(2250, 2760)"]),
}
# Sweeps scored on a held-out set after training (which evaluated on the selection set).
TEST_SETS = {"facade": FACADE_TEST}


def run_dir(output_dir: str, variant: Variant, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in variant.name).strip("_")
    return os.path.join(output_dir, slug, f"seed_{seed}")


def _teacher_weights(args: argparse.Namespace, seed: int) -> str:
    if args.teacher_weights:
        return args.teacher_weights
    if args.sweep in TEACHERS:
        return os.path.join(run_dir(args.output_dir, TEACHERS[args.sweep], args.teacher_seed),
                            "model_final.pth")
    return os.path.join(run_dir(args.output_dir, SWEEPS["target"][0], seed), "model_final.pth")


def plan(args: argparse.Namespace) -> list[tuple[Variant, int, list[str]]]:
    """(variant, seed, train_net command line) per run, teachers first: the sweep's own teacher
    run, if it has one and no --teacher-weights, then the baselines."""
    runs = []
    pending = [(v, s) for v in SWEEPS[args.sweep] for s in args.seeds]
    if args.sweep in TEACHERS and not args.teacher_weights:
        pending.insert(0, (TEACHERS[args.sweep], args.teacher_seed))
    for variant, seed in pending:
        opts = ["SEED", str(seed), "OUTPUT_DIR", run_dir(args.output_dir, variant, seed)]
        if args.max_iter:
            # A sweep's teacher trains twice as long as its students.
            max_iter = args.max_iter * (2 if variant is TEACHERS.get(args.sweep) else 1)
            opts += ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", f"({int(max_iter * 5 / 6)},)",
                     "SOLVER.CHECKPOINT_PERIOD", str(max_iter)]
        if variant.needs_teacher:
            opts += ["MODEL.TEACHER.WEIGHTS", _teacher_weights(args, seed)]
        cmd = ["--config-file", variant.config_file, *variant.opts, *opts, *args.opts]
        runs.append((variant, seed, cmd))
    return runs


def read_result(folder: str) -> dict[str, float] | None:
    """``{"bbox/AP": .., "segm/AP": .., "bbox/AP50": .., "segm/AP-window": ..}`` (every metric
    of the run's evaluation) of a finished run, or None if it has not finished."""
    path = os.path.join(folder, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    try:
        out = {f"{task}/{m}": float(data[task][m]) for task, m in METRICS}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: no {METRICS} in the evaluation results ({e!r})") from e
    for task, _ in METRICS:
        out.update({f"{task}/{m}": float(v) for m, v in data[task].items()})
    return out


def test_command(cmd: list[str], test_set: str) -> list[str]:
    """The eval-only command scoring a finished run's final model on ``test_set`` into
    ``<run>/test``."""
    pairs = dict(zip(cmd[2::2], cmd[3::2]))
    folder = pairs["OUTPUT_DIR"]
    # Flags before the KEY VALUE pairs, which take the rest of the command line.
    return [*cmd[:2], "--eval-only", *cmd[2:], "MODEL.WEIGHTS",
            os.path.join(folder, "model_final.pth"), "DATASETS.TEST", f"('{test_set}',)",
            "OUTPUT_DIR", os.path.join(folder, "test")]


def write_docs(path: str, table: str, args: argparse.Namespace) -> None:
    """Replaces the text between the sweep's markers (docs_markers) in ``path`` by ``table``."""
    begin, end = docs_markers(args.sweep)
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' section to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    scores = "test-set scores" if args.sweep in TEST_SETS else "scores"
    body = (f"\n`python tools/ablate.py --sweep {args.sweep} --seeds "
            f"{' '.join(map(str, args.seeds))}`: {scores}, mean ± sd over seeds; Δ = mean "
            "paired difference ± its standard error (p: two-sided paired t-test).\n\n"
            f"{table}\n")
    with open(path, "w") as f:
        f.write(head + begin + body + end + tail)


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
    if args.resume and not args.eval_only:
        check_resumable(args)
    results = train_net.main(args)
    # The last OUTPUT_DIR wins, as in the config merge.
    cfg_out = args.opts[len(args.opts) - 1 - args.opts[::-1].index("OUTPUT_DIR") + 1]
    atomic_write(os.path.join(cfg_out, RESULT_FILE), lambda f: json.dump(results, f), mode="w")


def check_resumable(args: argparse.Namespace) -> None:
    """Refuses to continue an interrupted run (a ``last_checkpoint`` in its OUTPUT_DIR) under
    another config than the ``config.yaml`` it started with: the checkpoint restores the state,
    not the settings, so the rest of the run would silently train otherwise. OUTPUT_DIR itself
    may differ (a moved folder)."""
    from condinst_percep.config import get_cfg, load_cfg
    from condinst_percep.config.config import flatten

    cfg = load_cfg(args.config_file, args.opts)
    saved_file = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not (os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
            and os.path.isfile(saved_file)):
        return
    saved = get_cfg()
    saved.merge_from_file(saved_file)
    then, now = flatten(saved), flatten(cfg)
    changed = [k for k in sorted(then.keys() | now.keys())
               if k != "OUTPUT_DIR" and then.get(k) != now.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in changed[:5])
        raise ValueError(
            f"{cfg.OUTPUT_DIR} holds a run interrupted in training under another config "
            f"({len(changed)} key(s) differ from its config.yaml: {diffs}); it cannot be "
            "continued. Delete the folder to train the run afresh"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="target")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, default=0,
                        help="shorter runs (STEPS at 5/6 of it); 0: the quickstart's schedule")
    parser.add_argument("--output-dir", default=os.path.join("output", "ablate"))
    parser.add_argument("--teacher-weights", default="",
                        help="teacher for '+loss (teacher)'; default: that seed's baseline")
    parser.add_argument("--teacher-seed", type=int, default=0,
                        help="SEED of the sweep's own teacher run (facade, boxinst)")
    parser.add_argument("--write-docs", default="",
                        help="a markdown file whose '<!-- ablate --sweep SWEEP: begin -->' ... "
                        "'<!-- ablate --sweep SWEEP: end -->' section gets the sweep's paired table")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=1,
                       help="runs at once on this machine (each with OMP_NUM_THREADS = cores / "
                       "jobs unless OMP_NUM_THREADS is set)")
    where.add_argument("--gpus", nargs="+", default=[],
                       help="one run at a time on each of these GPUs (CUDA_VISIBLE_DEVICES ids)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    # Children run in the repository root (the configs' relative paths); results stay put.
    args.output_dir = os.path.abspath(args.output_dir)
    if args.teacher_weights:
        args.teacher_weights = os.path.abspath(args.teacher_weights)
    return args


def slots(args: argparse.Namespace) -> list[dict[str, str]]:
    """The environment of each slot a run can take (see ablate_jobs)."""
    if args.gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in args.gpus]
    if args.jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return [{} for _ in range(args.jobs)]
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    return [{"OMP_NUM_THREADS": threads} for _ in range(args.jobs)]


def tasks(args: argparse.Namespace) -> list[tuple[Variant, int, Task]]:
    """(variant, seed, task) per run of ``plan``: training, then the test-set scoring where the
    sweep has a test set (not for its teacher); a student waits for a teacher trained here."""
    test_set = TEST_SETS.get(args.sweep)
    out = []
    for variant, seed, cmd in plan(args):
        folder = run_dir(args.output_dir, variant, seed)
        # Flags before the KEY VALUE pairs, which take the rest of the command line.
        commands = [([*cmd[:2], "--resume", *cmd[2:]], folder)]
        if test_set is not None and variant is not TEACHERS.get(args.sweep):
            commands.append((test_command(cmd, test_set), os.path.join(folder, "test")))
        steps = [Step([sys.executable, __file__, "--run-one", *c], f, "train_net.py " + " ".join(c))
                 for c, f in commands]
        # The last value of a key wins, as in the config merge.
        needs = dict(zip(cmd[2::2], cmd[3::2])).get("MODEL.TEACHER.WEIGHTS", "")
        out.append((variant, seed, Task(f"{variant.name} seed {seed}", steps,
                                        os.path.join(folder, "model_final.pth"), needs)))
    return out


def main(argv: list[str] | None = None) -> list[list]:
    args = parse_args(argv)
    planned = tasks(args)
    for _, _, task in planned:
        for step in task.steps:
            print(("[reused] " if read_result(step.folder) else "") + step.label, flush=True)
    if not args.dry_run:
        run_tasks([task for _, _, task in planned], slots(args),
                  lambda folder: read_result(folder) is not None, REPO)
    results: dict[str, dict[int, dict[str, float]]] = {v.name: {} for v in SWEEPS[args.sweep]}
    for variant, seed, task in planned:
        done = read_result(task.steps[-1].folder)
        if variant is not TEACHERS.get(args.sweep) and done is not None:
            results[variant.name][seed] = done
    rows = aggregate({name: list(runs.values()) for name, runs in results.items()})
    print(format_table(rows))
    if (args.sweep in TEST_SETS or args.sweep in TEACHERS) and any(results.values()):
        classes = FACADE_CLASSES if args.sweep == "facade" else ()
        table = paired_table(results, SWEEPS[args.sweep][0].name, classes)
        print(table)
        if args.write_docs:
            write_docs(args.write_docs, table, args)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run-one":
        run_one(sys.argv[2:])
    else:
        main()
