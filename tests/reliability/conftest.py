"""Writers of small COCO datasets and of bad files (images, json), a model that detects nothing,
and the data config of the reliability tests."""

import copy
import json
import os
import struct

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg

H, W = 24, 32
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
# A square and a triangle, well inside a 24x32 image.
SQUARE = [4.0, 4.0, 14.0, 4.0, 14.0, 14.0, 4.0, 14.0]
TRIANGLE = [18.0, 6.0, 28.0, 6.0, 23.0, 18.0]


def random_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def valid_dataset(num_images: int = 3) -> dict:
    """Images 1..n (``<id>.png``), each with a square of category 1 (annotation id 10 + id)
    and a triangle of category 2 (annotation id 20 + id)."""
    images = [
        {"id": i, "file_name": f"{i}.png", "height": H, "width": W}
        for i in range(1, num_images + 1)
    ]
    annotations = []
    for i in range(1, num_images + 1):
        annotations.append(
            {"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [4.0, 4.0, 10.0, 10.0],
             "iscrowd": 0, "area": 100.0, "segmentation": [list(SQUARE)]}
        )
        annotations.append(
            {"id": 20 + i, "image_id": i, "category_id": 2, "bbox": [18.0, 6.0, 10.0, 12.0],
             "iscrowd": 0, "area": 60.0, "segmentation": [list(TRIANGLE)]}
        )
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def write_dataset(folder, dataset: dict, write_images: bool = True) -> tuple[str, str]:
    """Writes ``annotations.json`` and, for every image entry with a usable size, a random PNG
    of that size. Returns (json_file, image_root)."""
    folder = str(folder)
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root, exist_ok=True)
    if write_images:
        for img in dataset.get("images", []):
            h, w = img.get("height"), img.get("width")
            if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
                cv2.imwrite(os.path.join(image_root, img["file_name"]), random_image(img["id"], h, w))
    json_file = os.path.join(folder, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file, image_root


def coco_name(json_file: str, image_root: str) -> str:
    """The ``coco:JSON:IMAGES`` dataset name of a written dataset (no registration needed)."""
    return f"coco:{json_file}:{image_root}"


class EmptyPredictor(nn.Module):
    """Stands in for a model: no detection on any image."""

    def __init__(self):
        super().__init__()
        self.num_calls = 0

    def forward(self, batched_inputs):
        self.num_calls += 1
        outputs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            outputs.append({"instances": Instances(
                (h, w), pred_boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                pred_classes=torch.zeros(0, dtype=torch.int64),
                pred_masks=torch.zeros(0, h, w, dtype=torch.bool),
            )})
        return outputs


def jpeg_with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Inserts an APP1 EXIF segment holding only the orientation tag (0x0112) after SOI."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.fixture
def data_cfg():
    """tiny_cfg loading 24-64 px images, 2 a batch, in the main process, with seed 3."""
    return tiny_cfg(**{
        "INPUT.MIN_SIZE_TRAIN": (24,), "INPUT.MAX_SIZE_TRAIN": 64,
        "INPUT.MIN_SIZE_TEST": 24, "INPUT.MAX_SIZE_TEST": 64,
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "SEED": 3,
    })
