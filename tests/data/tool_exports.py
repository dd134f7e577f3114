"""Small COCO files shaped like the exports of common labelling tools, with their images.

Each writer follows what the tool's exporter writes (read from its source or a real export):

- Roboflow (the facade set's ``_annotations.coco.json``): ids from 0; category 0 is the project
  (supercategory "none") and the supercategory of every class, used by no annotation; ``area``
  is the box's ``w * h``; the box corner is rounded to whole pixels, its size exact; images
  carry ``license`` and ``date_captured``.
- CVAT (datumaro's COCO exporter): ids from 1; supercategory ""; annotations carry
  ``attributes`` (``occluded``); rectangles come out as ``segmentation: []`` with ``area = w * h``;
  masks as ``iscrowd: 1`` uncompressed RLE; ``area`` of polygons from pycocotools.
- Label Studio (label-studio-converter's ``convert_to_coco``): ids from 0, category ids too (0
  a real class), no supercategory; ``file_name`` under ``images/`` (with backslashes on
  Windows); an ``ignore`` field; polygon ``area`` by the shoelace formula, box = the bounds.
- labelme2coco (labelme's ``examples/instance_segmentation/labelme2coco.py``): ids from 0;
  category 0 ``_background_`` from the labels file, supercategory None; ``file_name`` under
  ``JPEGImages/``; ``area`` and ``bbox`` from the rasterised mask (``toBbox``: whole pixels).
- pycocotools-written (a tool writing ``mask.encode`` output): ids from 1; non-crowd objects
  as compressed RLE (``counts`` a string); ``area`` and ``bbox`` from the RLE.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util

H, W = 48, 64
# Two objects per image: a quadrilateral of class "a" and a triangle of class "b", at
# fractional coordinates (shifted per image so images differ).
QUAD = [6.3, 5.6, 27.7, 6.2, 26.4, 30.8, 7.1, 29.5]
TRI = [36.6, 10.4, 58.2, 12.7, 47.3, 40.6]
NUM_IMAGES = 3


def _shift(poly: list[float], i: int) -> list[float]:
    return [v + (i if k % 2 == 0 else 0.5 * i) for k, v in enumerate(poly)]


def _objects(i: int) -> list[tuple[int, list[float]]]:
    """(class index 0 or 1, polygon) of image ``i``."""
    return [(0, _shift(QUAD, i)), (1, _shift(TRI, i))]


def _bounds(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _rle(poly: list[float]) -> dict:
    return mask_util.merge(mask_util.frPyObjects([poly], H, W))


def _shoelace(poly: list[float]) -> float:
    x, y = np.array(poly[0::2]), np.array(poly[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def roboflow() -> dict:
    categories = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
        {"id": k + 1, "name": n, "supercategory": "shapes"} for k, n in enumerate("ab")
    ]
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        images.append({"id": i, "license": 1, "file_name": f"img{i}_png.rf.{i:032x}.jpg",
                       "height": H, "width": W, "date_captured": "2023-07-11T17:14:49+00:00"})
        for cls, poly in _objects(i):
            x, y, w, h = _bounds(poly)
            bbox = [round(x), round(y), round(w, 3), round(h, 3)]
            annotations.append({"id": len(annotations), "image_id": i, "category_id": cls + 1,
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 3),
                                "segmentation": [poly], "iscrowd": 0})
    return {"info": {"description": "Exported from roboflow.ai"},
            "licenses": [{"id": 1, "name": "CC BY 4.0"}],
            "categories": categories, "images": images, "annotations": annotations}


def cvat() -> dict:
    categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate("ab")]
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        image_id = i + 1
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"frame_{i:06d}.png",
                       "license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0})
        for cls, poly in _objects(i):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "segmentation": [poly], "area": float(mask_util.area(_rle(poly))),
                "bbox": [round(v, 2) for v in _bounds(poly)], "iscrowd": 0,
                "attributes": {"occluded": False},
            })
    # A rectangle (no mask) and a brush mask (crowd RLE, uncompressed) on the last image.
    annotations.append({"id": len(annotations) + 1, "image_id": NUM_IMAGES, "category_id": 1,
                        "segmentation": [], "area": 40.0, "bbox": [2.0, 38.0, 8.0, 5.0],
                        "iscrowd": 0, "attributes": {"occluded": False}})
    brush = np.zeros((H, W), np.uint8)
    brush[36:46, 30:44] = 1
    counts = _uncompressed_counts(brush)
    annotations.append({"id": len(annotations) + 1, "image_id": NUM_IMAGES, "category_id": 2,
                        "segmentation": {"counts": counts, "size": [H, W]},
                        "area": float(brush.sum()), "bbox": [30.0, 36.0, 14.0, 10.0],
                        "iscrowd": 1, "attributes": {"occluded": False}})
    return {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": ""},
            "categories": categories, "images": images, "annotations": annotations}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def label_studio(windows_paths: bool = True) -> dict:
    categories = [{"id": k, "name": n} for k, n in enumerate("ab")]
    images, annotations = [], []
    sep = "\\" if windows_paths else "/"
    for i in range(NUM_IMAGES):
        images.append({"width": W, "height": H, "id": i, "file_name": f"images{sep}{i:08x}-photo.png"})
        for cls, poly in _objects(i):
            annotations.append({"id": len(annotations), "image_id": i, "category_id": cls,
                                "segmentation": [poly], "bbox": _bounds(poly), "ignore": 0,
                                "iscrowd": 0, "area": _shoelace(poly)})
    return {"images": images, "categories": categories, "annotations": annotations,
            "info": {"contributor": "Label Studio"}}


def labelme2coco() -> dict:
    categories = [{"supercategory": None, "id": k, "name": n} for k, n in
                  enumerate(["_background_", "a", "b"])]
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        images.append({"license": 0, "url": None, "file_name": f"JPEGImages/{i}.jpg", "height": H,
                       "width": W, "date_captured": None, "id": i})
        for cls, poly in _objects(i):
            rle = _rle(poly)
            annotations.append({"id": len(annotations), "image_id": i, "category_id": cls + 1,
                                "segmentation": [poly], "area": float(mask_util.area(rle)),
                                "bbox": mask_util.toBbox(rle).flatten().tolist(), "iscrowd": 0})
    return {"info": {"description": None}, "licenses": [{"url": None, "id": 0, "name": None}],
            "type": "instances", "images": images, "categories": categories,
            "annotations": annotations}


def pycocotools_written() -> dict:
    categories = [{"id": k + 1, "name": n, "supercategory": n} for k, n in enumerate("ab")]
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.png", "height": H, "width": W})
        for cls, poly in _objects(i):
            rle = _rle(poly)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": categories}


EXPORTS = {
    "roboflow": roboflow,
    "cvat": cvat,
    "label_studio": label_studio,
    "labelme2coco": labelme2coco,
    "pycocotools": pycocotools_written,
}


def write_export(folder, dataset: dict) -> tuple[str, str]:
    """Writes ``annotations.json`` and a random image per entry (folders as its ``file_name``
    says, read with "/"); returns (json_file, image_root)."""
    folder = str(folder)
    rng = np.random.default_rng(0)
    for img in dataset["images"]:
        path = os.path.join(folder, img["file_name"].replace("\\", "/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8))
    json_file = os.path.join(folder, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file, folder
