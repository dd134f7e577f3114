"""Deformable convolutions and BoxInst: what they cost against the plain model.

Two modes, every timing round-robin (one repeat of each case in turn, so other processes' load
hits all cases alike), medians and ratios from the same run:

``op``: ``deform_conv2d`` (DCNv1, and DCNv2 with a mask) against ``F.conv2d`` of the same
    shape, a 3x3 conv of ``--channels`` channels on ``--batch`` maps of ``--size``: forward,
    and forward + backward. Peak memory of forward + backward above what was in use before.
``step``: forward + backward + SGD step of the real R-50 CondInst of AdelaiDet's
    ``MS_R_50_1x`` config (random init) on a synthetic batch, per variant: ``condinst``,
    ``dcni3`` (DCNv2 in every third block of res3-res5, as BoxInst's dcni3 model), ``dcn``
    (DCNv1 in every block of res3-res5), ``boxinst`` (BoxInst's ``MS_R_50_1x``), and
    ``boxinst+dcni3``.

CPU (docs/benchmarks.md):
    OMP_NUM_THREADS=1 python benchmarks/bench_boxinst_dcn.py op
    OMP_NUM_THREADS=1 python benchmarks/bench_boxinst_dcn.py step
GPU (owed):
    python benchmarks/bench_boxinst_dcn.py op --device cuda --size 100 168 --batch 2
    python benchmarks/bench_boxinst_dcn.py step --device cuda --image-size 800 1088 --images 2
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_condinst_step import synthetic_batch  # noqa: E402
from bench_perceptual import machine_description, peak_bytes  # noqa: E402

from condinst_percep.config import get_cfg  # noqa: E402
from condinst_percep.layers import deform_conv2d  # noqa: E402
from condinst_percep.modeling import build_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "condinst": ("configs/CondInst/MS_R_50_1x.yaml", []),
    "dcni3": (
        "configs/CondInst/MS_R_50_1x.yaml",
        ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True],
         "MODEL.RESNETS.DEFORM_MODULATED", True, "MODEL.RESNETS.DEFORM_INTERVAL", 3],
    ),
    "dcn": (
        "configs/CondInst/MS_R_50_1x.yaml",
        ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True]],
    ),
    "boxinst": ("configs/BoxInst/MS_R_50_1x.yaml", []),
    "boxinst+dcni3": (
        "configs/BoxInst/MS_R_50_1x.yaml",
        ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True],
         "MODEL.RESNETS.DEFORM_MODULATED", True, "MODEL.RESNETS.DEFORM_INTERVAL", 3],
    ),
}


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def op_cases(args, device):
    gen = torch.Generator().manual_seed(0)
    n, c, (h, w) = args.batch, args.channels, args.size
    x = torch.randn(n, c, h, w, generator=gen).to(device).requires_grad_()
    weight = (0.05 * torch.randn(c, c, 3, 3, generator=gen)).to(device).requires_grad_()
    offset = torch.randn(n, 18, h, w, generator=gen).to(device).requires_grad_()
    mask = torch.rand(n, 9, h, w, generator=gen).to(device).requires_grad_()
    return {
        "conv2d": lambda: F.conv2d(x, weight, padding=1),
        "DCNv1": lambda: deform_conv2d(x, offset, weight, padding=1),
        "DCNv2": lambda: deform_conv2d(x, offset, weight, mask=mask, padding=1),
    }


def run_op_mode(args, device):
    cases = op_cases(args, device)
    times = {(name, kind): [] for name in cases for kind in ("fwd", "fwd+bwd")}

    def both(fn):
        fn().sum().backward()

    for _ in range(args.repeats):
        for name, fn in cases.items():
            with torch.no_grad():
                times[(name, "fwd")].append(timed(fn, device))
            times[(name, "fwd+bwd")].append(timed(lambda: both(fn), device))
    peaks = {name: peak_bytes(lambda fn=fn: both(fn), device) for name, fn in cases.items()}
    rows = []
    for (name, kind), ts in times.items():
        base = statistics.median(times[("conv2d", kind)])
        rows.append([
            name, kind, f"{statistics.median(ts) * 1e3:.1f}", f"{min(ts) * 1e3:.1f}",
            f"{statistics.median(ts) / base:.2f}",
            f"{peaks[name] / 2**20:.0f}" if kind == "fwd+bwd" else "",
        ])
    return ["op", "pass", "median ms", "min ms", "vs conv2d", "peak MiB (fwd+bwd)"], rows


class StepCase:
    def __init__(self, args, name: str):
        config, opts = VARIANTS[name]
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(REPO, config))
        cfg.merge_from_list([str(v) for v in opts] + [
            "MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "", "MODEL.FCOS.NUM_CLASSES",
            str(args.num_classes),
        ])
        torch.manual_seed(0)
        self.model = build_model(cfg)
        self.optimizer = torch.optim.SGD(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
        self.batch = synthetic_batch(args, seed=0)
        self.times: list[float] = []

    def step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.model(self.batch)
        sum(losses.values()).backward()
        self.optimizer.step()


def run_step_mode(args, device):
    cases = {name: StepCase(args, name) for name in args.variants}
    for case in cases.values():
        case.step()  # warm-up
    for _ in range(args.repeats):
        for case in cases.values():
            case.times.append(timed(case.step, device))
    peaks = {name: peak_bytes(case.step, device) for name, case in cases.items()}
    base_time = statistics.median(cases["condinst"].times) if "condinst" in cases else None
    rows = []
    for name, case in cases.items():
        median = statistics.median(case.times)
        rows.append([
            name, f"{median * 1e3:.0f}", f"{min(case.times) * 1e3:.0f}",
            f"{median / base_time:.2f}" if base_time else "-",
            f"{peaks[name] / 2**20:.0f}",
            f"{(peaks[name] - peaks['condinst']) / 2**20:+.0f}" if "condinst" in peaks else "-",
        ])
    return ["variant", "median ms/step", "min", "vs condinst", "peak MiB", "vs condinst MiB"], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("op", "step"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=128, help="op: channels (res3's width)")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 96), help="op: map H W")
    parser.add_argument("--batch", type=int, default=2, help="op: maps per call")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 320))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--gt-per-image", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=80)
    args = parser.parse_args()
    device = torch.device(args.device)
    start = datetime.datetime.now(datetime.timezone.utc)
    headers, rows = (run_op_mode if args.mode == "op" else run_step_mode)(args, device)
    print(f"{machine_description(args.device)}, torch {torch.__version__}, "
          f"{start:%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}")
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
