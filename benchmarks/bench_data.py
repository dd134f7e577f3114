"""Data pipeline speed: shapes generation, the training loader, and the mapper at COCO scale.

1. Generating the default shapes sets (1000 + 100 images, 128-192 px) into a fresh folder.
2. The training loader on that set: images/s over ``--batches`` batches of ``--batch`` images
   (after one warm-up batch), for each ``--workers`` value, the short side drawn from
   ``--train-sizes`` as in the quickstart.
3. The mapper alone on a COCO-like 640x480 JPEG with 15 polygon objects, resized to 800 short
   side and flipped: ms per image (median of ``--repeats``), without and with ``INPUT.CROP``
   (AdelaiDet's instance-aware crop: polygons clipped, boxes recomputed).

    python benchmarks/bench_data.py --workers 0 2
"""

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import BoxMode, DatasetMapper, build_detection_train_loader
from condinst_percep.data import register_coco_instances
from condinst_percep.data.builtin import SHAPES_SPLITS
from condinst_percep.data.shapes import generate_shapes


def bench_generation(folder: str) -> tuple[float, str]:
    start = time.perf_counter()
    json_file = ""
    for split, params in SHAPES_SPLITS.items():
        out = generate_shapes(os.path.join(folder, split), **params)
        json_file = json_file or out
    return time.perf_counter() - start, json_file


def bench_loader(json_file: str, workers: int, batch: int, batches: int, sizes: list[int]) -> float:
    name = f"bench_shapes_{workers}"
    register_coco_instances(name, {}, json_file, os.path.join(os.path.dirname(json_file), "images"))
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = tuple(sizes), 2 * max(sizes)
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS, cfg.SEED = batch, workers, 0
    it = iter(build_detection_train_loader(cfg))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def coco_like_record(folder: str) -> dict:
    """A 640x480 JPEG with 15 polygon objects (24-vertex stars), as a dataset dict."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    path = os.path.join(folder, "coco_like.jpg")
    cv2.imwrite(path, image)
    annotations = []
    for k in range(15):
        cx, cy, r = rng.uniform(100, 540), rng.uniform(100, 380), rng.uniform(10, 90)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=24))
        poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
        annotations.append({"id": k, "bbox": [cx - r, cy - r, 2 * r, 2 * r], "iscrowd": 0,
                            "bbox_mode": BoxMode.XYWH_ABS, "category_id": k % 80,
                            "segmentation": [poly]})
    return {"file_name": path, "height": 480, "width": 640, "image_id": 1,
            "annotations": annotations}


# Rows of the mapper benchmark: INPUT.CROP overrides (AdelaiDet's defaults: relative_range 0.9).
MAPPER_CROPS = {
    "": {},
    ", INPUT.CROP relative_range 0.9, CROP_INSTANCE True": {"ENABLED": True},
    ", INPUT.CROP relative_range 0.9, CROP_INSTANCE False": {"ENABLED": True, "CROP_INSTANCE": False},
}


def bench_coco_mapper(record: dict, repeats: int) -> dict[str, float]:
    """Median ms per image of the default training mapper (800 short side, flip) for each of
    MAPPER_CROPS, the settings interleaved so that they share the machine's load alike."""
    mappers = {}
    for label, crop in MAPPER_CROPS.items():
        cfg = get_cfg()
        for key, value in crop.items():
            cfg.INPUT.CROP[key] = value
        mappers[label] = DatasetMapper.build(cfg, is_train=True)
    times: dict[str, list[float]] = {label: [] for label in mappers}
    for i in range(repeats):
        for label, mapper in mappers.items():
            start = time.perf_counter()
            mapper(record, rng=np.random.default_rng(i))
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) * 1000 for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[128, 160, 192])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, cv2 {cv2.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        seconds, json_file = bench_generation(folder)
        print(f"generate shapes_train + shapes_val: {seconds:.1f} s")
        for workers in args.workers:
            ips = bench_loader(json_file, workers, args.batch, args.batches, args.train_sizes)
            print(f"train loader, shapes, NUM_WORKERS={workers}: {ips:.0f} images/s")
        for label, ms in bench_coco_mapper(coco_like_record(folder), args.repeats).items():
            print(f"mapper, 640x480 JPEG, 15 polygons -> 800 short side + flip{label}: {ms:.1f} ms/image")


if __name__ == "__main__":
    main()
