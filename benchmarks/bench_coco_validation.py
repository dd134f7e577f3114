"""Cost of the load-time bad-data checks on a COCO-like json.

Writes a synthetic instances json (``--images`` images of 640x480, ``--per-image`` polygon
annotations of 20 points each, 80 categories, COCO's density) to a temporary folder, then times
(median of ``--repeats``):

1. pycocotools' ``COCO(json)`` alone (parse + index: what any loader pays);
2. our ``read_coco_json`` (parse) and ``clean_coco_dataset`` (every check) separately;
3. ``load_coco_json`` end to end (parse, checks, index, records).

    python benchmarks/bench_coco_validation.py --images 20000
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np
from pycocotools.coco import COCO

from condinst_percep.data import load_coco_json
from condinst_percep.data.coco_validation import clean_coco_dataset, read_coco_json
from condinst_percep.data.validation import BadDataReport, collect_bad_data


def write_json(folder: str, num_images: int, per_image: int) -> str:
    rng = np.random.default_rng(0)
    images = [
        {"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(num_images)
    ]
    annotations = []
    for i in range(num_images):
        for _ in range(per_image):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            polygon = np.stack([x + rng.uniform(0, 100, 20), y + rng.uniform(0, 80, 20)], axis=1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": int(rng.integers(1, 81)),
                "bbox": [x, y, 100.0, 80.0], "iscrowd": 0, "area": 4000.0,
                "segmentation": [np.round(polygon, 2).ravel().tolist()],
            })
    categories = [{"id": c, "name": str(c)} for c in range(1, 81)]
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--per-image", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        json_file = write_json(folder, args.images, args.per_image)
        image_root = os.path.join(folder, "images")
        os.makedirs(image_root)
        num_anns = args.images * args.per_image

        def pycocotools_only():
            with contextlib.redirect_stdout(io.StringIO()):
                COCO(json_file)

        def load():
            with collect_bad_data(BadDataReport("error")):
                load_coco_json(json_file, image_root)

        parsed = read_coco_json(json_file)
        rows = [
            ("pycocotools COCO(json): parse + index", median_time(pycocotools_only, args.repeats)),
            ("read_coco_json: parse", median_time(lambda: read_coco_json(json_file), args.repeats)),
            ("clean_coco_dataset: every check", median_time(
                lambda: clean_coco_dataset(parsed, json_file, BadDataReport("error")), args.repeats)),
            ("load_coco_json: end to end", median_time(load, args.repeats)),
        ]
    print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, cv2 {cv2.__version__}")
    print(f"{args.images} images, {num_anns} annotations, median of {args.repeats}")
    print("| what | s | µs per annotation |\n|---|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.2f} | {seconds / num_anns * 1e6:.1f} |")


if __name__ == "__main__":
    main()
