"""Shared pieces of the detectron2 / AdelaiDet integration tests: a polygon-annotated dataset of
irregular objects on textured images, registered in detectron2's DatasetCatalog, and configs
from AdelaiDet's own configs folder."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
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
    """``root/images/*.jpg`` and ``root/annotations.json`` (COCO): occluded circles, rectangles,
    triangles and ellipses on textured, noisy backgrounds (condinst_percep.data.shapes), each
    annotation the polygons of its visible, irregular part. Returns (json, image dir)."""
    from condinst_percep.data.shapes import SHAPE_CLASSES, render_scene

    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        h, w = (int(s) for s in rng.integers(min_size, max_size + 1, size=2))
        image, classes, _, visible = render_scene(rng, h, w, max_objects)
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(image_dir, name), image)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for cls, vis in zip(classes, visible):
            polygons = polygons_of(vis)
            if not polygons:
                continue
            xs, ys = np.nonzero(vis)[1], np.nonzero(vis)[0]
            x0, y0 = float(xs.min()), float(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                "segmentation": polygons, "area": float(vis.sum()), "iscrowd": 0,
                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
            })
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_dir


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
