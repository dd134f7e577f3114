"""Exact pure-torch NMS vs a textbook greedy loop; and the postprocess peak memory bound.

    python benchmarks/bench_nms.py [--device cpu|cuda] [--sizes 500 2000 5000] [--threads 1]

Boxes imitate FCOS candidates of one image: clustered around 30 objects, 80 classes.
"""

from __future__ import annotations

import argparse
import time

import torch

from condinst_percep.layers import batched_nms
from condinst_percep.structures import pairwise_iou


def candidates(n: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(30, 2, generator=gen) * 800
    obj = torch.randint(0, 30, (n,), generator=gen)
    xy = centres[obj] + torch.randn(n, 2, generator=gen) * 15
    wh = torch.rand(n, 2, generator=gen) * 150 + 20
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    scores = torch.rand(n, generator=gen)
    classes = (obj * 7 + torch.randint(0, 2, (n,), generator=gen)) % 80
    return boxes.to(device), scores.to(device), classes.to(device)


def greedy_loop(boxes, scores, idxs, thr):
    """The textbook loop: one host synchronisation per visited box."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    iou = pairwise_iou(boxes[order].float(), boxes[order].float()) > thr
    same = idxs[order][:, None] == idxs[order][None]
    for i in range(len(order)):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        suppressed |= iou[i] & same[i]
    return order[torch.tensor(keep, device=boxes.device)]


def timed(fn, device, repeat=5):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: less noise on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| boxes | kept | batched_nms (ms) | greedy loop (ms) | same result |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        boxes, scores, classes = candidates(n, args.device)
        ms, keep = timed(lambda: batched_nms(boxes, scores, classes, 0.6), args.device)
        ms_loop, ref = timed(lambda: greedy_loop(boxes, scores, classes, 0.6), args.device, repeat=1)
        print(f"| {n} | {len(keep)} | {ms:.1f} | {ms_loop:.1f} | {torch.equal(keep, ref)} |")


if __name__ == "__main__":
    main()
