"""Exact NMS: ours (CPU blocks, and the CUDA path's full-matrix algorithm run on the CPU) against
a textbook greedy loop, OpenCV's compiled ``NMSBoxesBatched`` and, where importable (the peer
environment), torchvision's ``batched_nms`` (AdelaiDet's ``ml_nms``).

    python benchmarks/bench_nms.py [--device cpu|cuda] [--sizes 100 1000 5000] [--threads 1]
    PYTHONPATH=$PWD $PEER_PY benchmarks/bench_nms.py     # adds torchvision's columns

Boxes imitate FCOS candidates of one image: clustered around 30 objects, 80 classes. "same"
columns compare the kept index lists with the textbook loop's (float32 IoU, like torchvision).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from condinst_percep.layers import batched_nms
from condinst_percep.layers.nms import _float32_below, _greedy_matrix
from condinst_percep.structures import pairwise_iou

try:
    import torchvision
except ImportError:
    torchvision = None


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
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def matrix_nms(boxes, scores, idxs, thr):
    """The CUDA path's algorithm, on whatever device the tensors are."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = _greedy_matrix(boxes[order].float(), idxs[order], _float32_below(thr).to(boxes.device))
    return order[keep]


def opencv_nms(boxes, scores, idxs, thr):
    b = boxes.double().cpu().numpy()
    rects = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(rects, scores.cpu().numpy(), idxs.cpu().numpy(), -np.inf, thr)
    return torch.as_tensor(np.asarray(keep, dtype=np.int64).reshape(-1))


def opencv_at_the_threshold(pairs: int = 5000, seed: int = 0) -> tuple[int, int, int]:
    """Two-box problems whose threshold is the pair's float32 IoU or its float32 neighbours:
    (decisions, OpenCV's that differ from the float32 greedy's, ours that differ)."""
    rng = np.random.default_rng(seed)
    decisions = opencv_diff = ours_diff = 0
    scores = torch.tensor([0.9, 0.8])
    classes = torch.zeros(2, dtype=torch.int64)
    for _ in range(pairs):
        b = (rng.random((2, 4)) * 100).astype(np.float32)
        b[:, 2:] = b[:, :2] + (rng.random((2, 2)) * 50 + 1).astype(np.float32)
        boxes = torch.from_numpy(b)
        iou = pairwise_iou(boxes[:1], boxes[1:])[0, 0]
        if iou <= 0:
            continue
        for thr in (iou, torch.nextafter(iou, torch.tensor(0.0)), torch.nextafter(iou, torch.tensor(1.0))):
            thr = float(thr)
            suppressed = float(iou) > thr
            decisions += 1
            opencv_diff += (len(opencv_nms(boxes, scores, classes, thr)) == 1) != suppressed
            ours_diff += (len(batched_nms(boxes, scores, classes, thr)) == 1) != suppressed
    return decisions, opencv_diff, ours_diff


def timed(fn, device, repeat=5):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: less noise on a shared box)")
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    columns = ["ours", "full matrix", "OpenCV"] + (["torchvision"] if torchvision else [])
    print("median ms per call, same = kept indices equal to the textbook loop's")
    print("| boxes | kept | " + " | ".join(f"{c} (ms) | {c} same" for c in columns) + " | loop (ms) |")
    print("|---|---|" + "---|---|" * len(columns) + "---|")
    for n in args.sizes:
        boxes, scores, classes = candidates(n, args.device)
        fns = [batched_nms, matrix_nms, opencv_nms]
        if torchvision:
            fns.append(torchvision.ops.batched_nms)
        ms_loop, ref = timed(lambda: greedy_loop(boxes, scores, classes, 0.6), args.device, repeat=1)
        cells = []
        for fn in fns:
            ms, keep = timed(lambda: fn(boxes, scores, classes, 0.6), args.device, args.repeat)
            cells.append(f"{ms:.2f} | {torch.equal(keep.cpu(), ref.cpu())}")
        print(f"| {n} | {len(ref)} | " + " | ".join(cells) + f" | {ms_loop:.1f} |")
    decisions, opencv_diff, ours_diff = opencv_at_the_threshold()
    print(f"\nIoU at the threshold (float32 IoU and its float32 neighbours, {decisions} two-box "
          f"decisions): OpenCV differs from the float32 greedy in {opencv_diff}, ours in {ours_diff}")


if __name__ == "__main__":
    main()
