"""The kernels behind three speed-ups of the training step, each against what it replaced.

Shapes are those of the quickstart's perceptual step (277 sampled instances, masks 40×56 at
stride 4, the "1,1,1,1,1" loss network with widths 8..64, a 3-layer dynamic mask head with 8
channels on 20×28 mask features) unless ``--instances``/``--mask-size`` say otherwise. Every
pair runs round-robin; medians, ratios and the largest difference of the two results
(relative to the largest magnitude) come from the same run.

``conv-input-grad``: input gradient of the loss network's first convolution (1 → 8 channels,
    3×3): autograd's convolution backward against the forward convolution of the output
    gradient with the adjoint (flipped, transposed) kernel, which ``RandomPerceptualNet`` uses.
``maxpool``: the 2×2 ceil-mode max-pool after the first block, forward + backward, NCHW
    against channels_last (``MODEL.PERCEP.CHANNELS_LAST``).
``dynamic-head``: the dynamic mask head's per-instance 1×1 convolutions, forward + backward:
    a grouped convolution (AdelaiDet's) against one batched matrix product (ours).

    python benchmarks/bench_kernels.py --precisions fp32 bf16
    python benchmarks/bench_kernels.py --device cuda --instances 500 --mask-size 200 336
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def conv_input_grad_pair(n, h, w, dtype, device, gen):
    x = torch.rand(n, 1, h, w, generator=gen).to(device, dtype)
    weight = torch.randn(8, 1, 3, 3, generator=gen).to(device, dtype)
    # channels_last, as the loss network produces it with MODEL.PERCEP.CHANNELS_LAST.
    grad = torch.randn(n, 8, h, w, generator=gen).to(device, dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)
    adjoint = weight.flip((2, 3)).transpose(0, 1)

    def autograd_backward():
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [True, False, False],
        )[0]

    def adjoint_forward():
        return F.conv2d(grad, adjoint, padding=1)

    return ("autograd convolution backward", autograd_backward), (
        "forward conv, adjoint kernel", adjoint_forward)


def maxpool_pair(n, h, w, dtype, device, gen):
    y = torch.rand(n, 8, h, w, generator=gen).to(device, dtype)

    def run(x):
        x = x.detach().requires_grad_(True)
        out = F.max_pool2d(x, 2, 2, ceil_mode=True)
        out.backward(torch.ones_like(out))
        return x.grad.contiguous()

    nhwc = y.contiguous(memory_format=torch.channels_last)
    return ("NCHW", lambda: run(y)), ("channels_last", lambda: run(nhwc))


def dynamic_head_pair(n, h, w, dtype, device, gen):
    h, w = h // 2, w // 2  # mask features are at stride 8, the masks at 4
    x = torch.randn(n, 10, h * w, generator=gen).to(device, dtype)
    layers = [(10, 8), (8, 8), (8, 1)]
    params = [(torch.randn(n, o, i, generator=gen).to(device, dtype), torch.randn(n, o, 1, generator=gen)
               .to(device, dtype)) for i, o in layers]

    def run(step):
        leaves = [(wt.detach().requires_grad_(True), b.detach().requires_grad_(True))
                  for wt, b in params]
        out = x
        for layer, (wt, b) in enumerate(leaves):
            out = step(out, wt, b)
            if layer < len(leaves) - 1:
                out = F.relu(out)
        out.sum().backward()
        return out.reshape(n, -1)

    def grouped(out, wt, b):
        k = wt.shape[1]
        y = F.conv2d(out.reshape(1, -1, h, w), wt.reshape(n * k, -1, 1, 1), b.reshape(-1),
                     groups=n)
        return y.reshape(n, k, h * w)

    def batched(out, wt, b):
        return torch.baddbmm(b, wt, out)

    return ("grouped conv", lambda: run(grouped)), ("baddbmm", lambda: run(batched))


PAIRS = {"conv-input-grad": conv_input_grad_pair, "maxpool": maxpool_pair,
         "dynamic-head": dynamic_head_pair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", default=list(PAIRS), choices=tuple(PAIRS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=tuple(DTYPES))
    parser.add_argument("--instances", type=int, default=277)
    parser.add_argument("--mask-size", type=int, nargs=2, default=[40, 56])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    cases = []
    for kernel in args.kernels:
        for precision in args.precisions:
            pair = PAIRS[kernel](args.instances, *args.mask_size, DTYPES[precision],
                                 torch.device(args.device), gen)
            results = [fn() for _, fn in pair]  # also the warm-up
            ref = results[0].float()
            diff = ((results[1].float() - ref).abs().max() / ref.abs().max()).item()
            cases.append((kernel, precision, pair, diff, ([], [])))
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for _, _, pair, _, times in cases:
            for (_, fn), bucket in zip(pair, times):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                bucket.append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]
    rows = []
    for kernel, precision, pair, diff, times in cases:
        old, new = (statistics.median(t) * 1000 for t in times)
        rows.append([kernel, precision, pair[0][0], f"{old:.1f}", pair[1][0], f"{new:.1f}",
                     f"{new / old:.2f}", f"{diff:.1e}"])
    print(f"machine: {machine_description(args.device)}; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"repeats: {args.repeats} round-robin; 1-min load average {load_before:.1f} before, "
          f"{load_after:.1f} after\n")
    print(tabulate(rows, headers=["kernel", "precision", "before", "median ms", "after",
                                  "median ms", "after / before", "max |diff| / max |before|"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
