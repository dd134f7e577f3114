"""The teacher's forward in bfloat16 (MODEL.TEACHER.AUTOCAST) against float32: what it does to
loss_percep and its gradient, and what it saves.

Builds the teacher quickstart (``configs/Quickstart/CondInst-Percep-Teacher_shapes.yaml``: the
plain quickstart's trained model as the frozen teacher, so train that first), takes one
training batch of ``shapes_train``, runs the student once to get its sampled instances and mask
logits, then for each teacher precision computes the teacher's soft masks, ``loss_percep`` and
its gradient with respect to the student's mask logits. The student is either freshly
initialised (as at the start of training) or loaded from ``--student-weights`` (e.g. the
perceptual quickstart's final model). Timings: median of ``--repeats`` teacher forwards, the
precisions round-robin.

    OMP_NUM_THREADS=1 python benchmarks/bench_teacher_precision.py \\
        --student-weights output/quickstart/condinst_percep_shapes/model_final.pth
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench_perceptual import machine_description
from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_train_loader
from condinst_percep.modeling import build_model

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def capture_head_inputs(model, batch) -> dict:
    """The mask head's training inputs for ``batch`` (one student forward)."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(mask_feats=args[0], stride=args[1], instances=args[2],
                    gt_instances=args[3], images=kwargs["images"])

    handle = model.mask_head.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(batch)
    handle.remove()
    return seen


def compare(head, seen, repeats: int) -> list[list]:
    logits = head.mask_logits(seen["mask_feats"], seen["stride"], seen["instances"]).detach()
    results, times = {}, {name: [] for name in PRECISIONS}
    for _ in range(repeats):
        for name, dtype in PRECISIONS.items():
            head.teacher_autocast = dtype
            t0 = time.perf_counter()
            head.teacher_soft_masks(seen["images"], seen["instances"])
            times[name].append(time.perf_counter() - t0)
    for name, dtype in PRECISIONS.items():
        head.teacher_autocast = dtype
        leaf = logits.clone().requires_grad_(True)
        loss = head.perceptual_loss(leaf, seen["instances"], seen["gt_instances"], seen["images"])
        (grad,) = torch.autograd.grad(loss, leaf)
        masks = head.teacher_soft_masks(seen["images"], seen["instances"]).float()
        results[name] = (loss.detach(), grad.flatten(), masks)
    ref_loss, ref_grad, ref_masks = results["float32"]
    base = statistics.median(times["float32"])
    rows = []
    for name in PRECISIONS:
        loss, grad, masks = results[name]
        rows.append([
            name, len(seen["instances"]), f"{loss.item():.6g}",
            f"{((loss - ref_loss).abs() / ref_loss.abs()).item():.1e}",
            f"{F.cosine_similarity(grad, ref_grad, dim=0).item():.6f}",
            f"{(masks - ref_masks).abs().max().item():.1e}",
            f"{statistics.median(times[name]) * 1000:.0f}",
            f"{statistics.median(times[name]) / base:.2f}",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/Quickstart/CondInst-Percep-Teacher_shapes.yaml")
    parser.add_argument("--student-weights", default="",
                        help="student checkpoint; empty: freshly initialised (seed 0)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = get_cfg()
    cfg.merge_from_file(args.config)
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if args.student_weights:
        Checkpointer(model).load(args.student_weights)
    batch = next(iter(build_detection_train_loader(cfg)))
    rows = compare(model.mask_head, capture_head_inputs(model, batch), args.repeats)
    print(f"machine: {machine_description('cpu')}; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"student: {args.student_weights or 'freshly initialised'}; teacher: "
          f"{cfg.MODEL.TEACHER.WEIGHTS}; 1-min load average {os.getloadavg()[0]:.1f}\n")
    print(tabulate(rows, headers=[
        "teacher precision", "instances", "loss_percep", "rel. diff to float32",
        "grad cosine to float32", "max |soft mask diff|", "teacher forward ms", "vs float32",
    ], tablefmt="github"))


if __name__ == "__main__":
    main()
