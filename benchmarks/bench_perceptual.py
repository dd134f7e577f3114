"""Time and peak memory of the generic perceptual loss: forward(pred) + forward(target) + backward.

Every case builds ``PerceptualLoss(RandomPerceptualNet(1, structure))`` and times
``loss(sigmoid(logits), target).backward()`` (the gradient reaches the logits, as in training).
Cases run round-robin, one repeat of every case after the other, so load from other processes
hits all of them alike; the table gives medians and each case's time relative to the fp32
unchunked case of the same structure, size and instance count, measured in the same run.

Peak memory of one call: on CUDA ``max_memory_allocated`` above what was allocated before it;
on the CPU (Linux) the peak resident set size above the one just before it, after a warm-up
call, ``malloc_trim`` (so memory freed earlier is not counted as resident) and a reset of the
kernel's high-water mark (``/proc/self/clear_refs``); allocator overheads included.

CPU example (the matrix in docs/benchmarks.md):
    python benchmarks/bench_perceptual.py --device cpu --sizes 128x128 --instances 8 \
        --modes fp32 bf16 chunked --extra 1,1,1,1,1/200x336/8/fp32 1,1,1,1,1/200x336/8/bf16
H100 (the full matrix):
    python benchmarks/bench_perceptual.py --device cuda --sizes 200x336 128x128 \
        --instances 8 64 --modes fp32 bf16 fp16 chunked bf16-chunked --repeats 10
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import ctypes
import time

import torch
from tabulate import tabulate

from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.perceptual.random_net import VGG_STRUCTURES

# mode -> (autocast dtype or None, chunked)
MODES = {
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "chunked": (None, True),
    "bf16-chunked": (torch.bfloat16, True),
}


def parse_structure(text: str) -> tuple[int, ...]:
    if text in VGG_STRUCTURES:
        return VGG_STRUCTURES[text]
    return tuple(int(s) for s in text.split(","))


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_case(text: str) -> tuple:
    """STRUCTURE/HxW/N/MODE, e.g. 1,1,1,1,1/200x336/8/fp32."""
    structure, size, n, mode = text.split("/")
    if mode not in MODES:
        raise SystemExit(f"case {text}: unknown mode {mode!r}, choose from {tuple(MODES)}")
    return parse_structure(structure), parse_size(size), int(n), mode


def forward_gflop(net: RandomPerceptualNet, size: tuple[int, int]) -> float:
    """Forward GFLOP of one instance (2 per multiply-add), convolutions only."""
    h, w = size
    total = 0
    for block in net.blocks:
        for conv in block:
            c_out, c_in, k, _ = conv.weight.shape
            total += 2 * k * k * c_in * c_out * h * w
        h, w = -(-h // 2), -(-w // 2)
    return total / 1e9


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def peak_bytes(step, device: torch.device) -> int:
    """Peak memory of one ``step()`` above the memory in use before it (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    step()  # warm-up: allocator caches and lazily built state are not part of the peak
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _proc_status_bytes("VmRSS")
    step()
    return _proc_status_bytes("VmHWM") - before


class Case:
    def __init__(self, structure, size, n, mode, chunk_size, device):
        self.structure, self.size, self.n, self.mode = structure, size, n, mode
        dtype, chunked = MODES[mode]
        self.autocast_dtype = dtype
        self.net = RandomPerceptualNet(1, structure=structure).to(device)
        self.loss = PerceptualLoss(self.net, loss_weight=0.1,
                                   chunk_size=chunk_size if chunked else None)
        gen = torch.Generator().manual_seed(0)
        self.logits = (4 * torch.randn(n, 1, *size, generator=gen)).to(device).requires_grad_()
        self.target = torch.sigmoid(4 * torch.randn(n, 1, *size, generator=gen)).to(device)
        self.device = torch.device(device)
        self.times: list[float] = []
        self.peak_bytes = None
        self.gflop = 3 * n * forward_gflop(self.net, size)

    def step(self) -> None:
        self.logits.grad = None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            value = self.loss(torch.sigmoid(self.logits), self.target)
        value.backward()

    def time_step(self) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.step()
        sync()
        self.times.append(time.perf_counter() - t0)

    @property
    def key(self):
        return (self.structure, self.size, self.n)

    def label(self) -> str:
        s = ",".join(map(str, self.structure))
        name = {v: k for k, v in VGG_STRUCTURES.items()}.get(self.structure)
        return f"{name} ({s})" if name else s


def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--structures", nargs="+", default=["1,1,1,1,1", "vgg16", "vgg19"],
                        help="comma lists of convolutions per block, or vgg11/13/16/19")
    parser.add_argument("--sizes", nargs="+", default=["128x128"], help="HxW of the masks")
    parser.add_argument("--instances", nargs="+", type=int, default=[8])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "chunked"],
                        choices=tuple(MODES))
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more cases STRUCTURE/HxW/N/MODE, e.g. 1,1,1,1,1/200x336/8/fp32")
    parser.add_argument("--chunk-size", type=int, default=2, help="instances per chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    if args.device == "cpu" and "fp16" in " ".join(args.modes + args.extra):
        raise SystemExit("fp16 autocast is a GPU mode; use bf16 on the CPU")

    specs = [(parse_structure(s), parse_size(z), n, m)
             for s in args.structures for z in args.sizes for n in args.instances
             for m in args.modes]
    specs += [parse_case(extra) for extra in args.extra]
    cases = [Case(*spec, args.chunk_size, args.device) for spec in specs]
    load_before = os.getloadavg()[0]

    for case in cases:
        case.peak_bytes = peak_bytes(case.step, case.device)
    for _ in range(args.warmup):
        for case in cases:
            case.time_step()
            case.times.clear()
    for _ in range(args.repeats):
        for case in cases:
            case.time_step()

    load_after = os.getloadavg()[0]
    baseline = {c.key: statistics.median(c.times) for c in cases if c.mode == "fp32"}
    rows = []
    for c in cases:
        median = statistics.median(c.times)
        ref = baseline.get(c.key)
        rows.append([
            c.label(), f"{c.size[0]}x{c.size[1]}", c.n,
            c.mode + (f" (chunk {args.chunk_size})" if MODES[c.mode][1] else ""),
            f"{median * 1000:.0f}", f"{min(c.times) * 1000:.0f}",
            f"{median / ref:.2f}" if ref else "-",
            f"{c.gflop / median:.0f}", f"{c.peak_bytes / 2**20:.0f}",
        ])
    print(f"machine: {machine_description(args.device)}; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"repeats: {args.repeats} round-robin, after {args.warmup} warm-up round(s); "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after\n")
    headers = ["structure", "size", "n", "mode", "median ms", "min ms", "vs fp32",
               "GFLOP/s", "peak MiB"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
