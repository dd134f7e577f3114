"""Training-step cost of CondInst model configs against the first one (plain CondInst).

Each ``--configs`` file (e.g. AdelaiDet's ``MS_R_50_1x``, ``MS_R_50_3x_sem``, ``MS_R_50_BiFPN_1x``)
is built with random weights and stepped (forward + backward + SGD) on the same synthetic batch
as ``bench_condinst_step.py``; timings round-robin over the models (one repeat of each in turn, so
the machine's load hits all alike), medians and ratios to the first config from the same run.
Peak memory of one step: CUDA ``max_memory_allocated``; CPU peak RSS above the resident size
before the step. Two load-independent measures beside them: the FLOPs of one step (forward +
backward, ``torch.utils.flop_counter``) and the bytes of the distinct tensor storages other than
parameters that autograd saves for the backward pass (the activation memory).

CPU, R-50 at full width on 2 images of 320x448 (docs/benchmarks.md):
    OMP_NUM_THREADS=1 python benchmarks/bench_condinst_models.py --configs \\
        configs/CondInst/MS_R_50_1x.yaml configs/CondInst/MS_R_50_3x_sem.yaml \\
        configs/CondInst/MS_R_50_BiFPN_1x.yaml configs/CondInst/MS_R_50_BiFPN_3x_sem.yaml
"""
import argparse
import copy
import datetime
import os
import statistics
import sys

import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from bench_condinst_step import PRECISIONS, StepCase
from bench_perceptual import machine_description, peak_bytes


def step_flops(step) -> int:
    """FLOPs of one ``step()`` (matrix products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def saved_bytes(step, model: torch.nn.Module) -> int:
    """Bytes of the distinct storages, parameters excepted, that autograd saves for backward
    during one ``step()``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True,
                        help="config files; the first is the baseline of the ratios")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 448])
    parser.add_argument("--gt-per-image", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="config KEY VALUE pairs for all")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    load_before = os.getloadavg()[0]
    cases = []
    for path in args.configs:
        # StepCase builds ``args.config`` as plain CondInst (no perceptual loss).
        case_args = copy.copy(args)
        case_args.config, case_args.coco = path, False
        cases.append(StepCase(case_args, os.path.basename(path)[:-5], None, args.precision, None))
    for case in cases:
        case.peak = peak_bytes(case.train_step, case.device)
        case.flops = step_flops(case.train_step)
        case.saved = saved_bytes(case.train_step, case.model)
    for _ in range(args.warmup):
        for case in cases:
            case.train_step()
    for _ in range(args.repeats):
        for case in cases:
            case.timed(case.train_step)
    base, base_peak = statistics.median(cases[0].times), cases[0].peak
    rows = []
    for c in cases:
        med = statistics.median(c.times)
        params = sum(p.numel() for p in c.model.parameters())
        rows.append([c.name, f"{params / 1e6:.1f}", c.instances, f"{c.flops / 1e9:.1f}",
                     f"{c.flops / cases[0].flops:.3f}", f"{med * 1000:.0f}",
                     f"{min(c.times) * 1000:.0f}", f"{med / base:.3f}",
                     f"{c.saved / 2**20:.0f}", f"{c.saved / cases[0].saved:.3f}",
                     f"{c.peak / 2**20:.0f}", f"{(c.peak - base_peak) / 2**20:+.0f}"])
    load_after = os.getloadavg()[0]
    print(f"machine: {machine_description(args.device)}; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"batch: {args.images} images {args.image_size[0]}x{args.image_size[1]}, "
          f"{args.gt_per_image} GT each, {args.precision}; {args.repeats} repeats round-robin "
          f"after {args.warmup} warm-up round(s); 1-min load average {load_before:.1f} before, "
          f"{load_after:.1f} after\n")
    headers = ["config", "params M", "instances", "GFLOP/step", "vs first", "median ms/step",
               "min", "vs first", "activations saved MiB", "vs first", "peak RSS MiB",
               "vs first MiB"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
