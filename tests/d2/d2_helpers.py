"""Shared pieces of the detectron2 / AdelaiDet integration tests: a polygon-annotated dataset of
irregular objects on textured images, registered in detectron2's DatasetCatalog, and configs
from AdelaiDet's own configs folder."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

SKIP_REASON = (
    "detectron2 is not importable: the integration tests run in the peer environment "
    "(bash tools/peer_env.sh builds it; .ci/run runs them there)"
)
ADELAIDET_SKIP_REASON = "AdelaiDet (adet) is not importable: see docs/detectron2.md"


def polygons_of(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons (pixel centres)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c.reshape(-1, 2) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def write_polygon_dataset(
    root: str, num_images: int, seed: int = 0, min_size: int = 160, max_size: int = 256,
    max_objects: int = 4,
) -> tuple[str, str]:
    """The synthetic shapes set (condinst_percep.data.shapes: occluded circles, rectangles,
    triangles and ellipses on textured, noisy backgrounds) with every annotation stored as the
    polygons of its visible, irregular part (the generator stores about half as RLE, which
    detectron2's ``INPUT.MASK_FORMAT "polygon"`` cannot read). Returns (json, image dir)."""
    from condinst_percep.data import generate_shapes

    json_file = generate_shapes(root, num_images, min_size, max_size, seed, max_objects)
    with open(json_file) as f:
        dataset = json.load(f)
    for ann in dataset["annotations"]:
        segm = ann["segmentation"]
        if isinstance(segm, dict):
            rle = {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
            ann["segmentation"] = polygons_of(mask_util.decode(rle).astype(bool))
    dataset["annotations"] = [a for a in dataset["annotations"] if a["segmentation"]]
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file, os.path.join(root, "images")


def register_polygon_dataset(name: str, root: str, num_images: int, seed: int = 0, **kw) -> str:
    """Writes the set (:func:`write_polygon_dataset`) and registers it in detectron2's
    DatasetCatalog with detectron2's own COCO loader; returns ``name``."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file, image_dir = write_polygon_dataset(root, num_images, seed=seed, **kw)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_dir)
    return name


def adelaidet_config(name: str = "CondInst/MS_R_50_1x.yaml", *opts):
    """AdelaiDet's config (its get_cfg and the YAML from its own configs folder) with our keys
    added, on the CPU, no weights file, test-sized images."""
    adet = pytest.importorskip("adet", reason=ADELAIDET_SKIP_REASON)
    from adet.config import get_cfg

    from condinst_percep.d2 import add_condinst_percep_config

    cfg = get_cfg()
    add_condinst_percep_config(cfg)
    configs = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs")
    cfg.merge_from_file(os.path.join(configs, name))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", (224,),
        "INPUT.MAX_SIZE_TRAIN", 400, "INPUT.MIN_SIZE_TEST", 224, "INPUT.MAX_SIZE_TEST", 400,
        "INPUT.RANDOM_FLIP", "none", "INPUT.HFLIP_TRAIN", False, "MODEL.FCOS.NUM_CLASSES", 4,
        "DATALOADER.NUM_WORKERS", 0, *opts,
    ])
    return cfg


def mapped_batch(cfg, dataset: str, is_train: bool, count: int = 2) -> list[dict]:
    """The first ``count`` records of ``dataset`` through detectron2's DatasetMapper."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=is_train)
    return [mapper(d) for d in DatasetCatalog.get(dataset)[:count]]
