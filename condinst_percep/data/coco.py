"""COCO-format json -> detectron2-style dataset dicts, through pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time

import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from .catalog import DatasetCatalog, MetadataCatalog
from .detection_utils import BoxMode

logger = logging.getLogger(__name__)


def load_coco_api(json_file: str, dataset_name: str | None = None) -> COCO:
    """Loads the json with pycocotools, turning missing files and bad json into clear errors."""
    who = f"Dataset '{dataset_name}': " if dataset_name else ""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{who}annotation file not found: {json_file}")
    # pycocotools prints progress to stdout; keep it out of the user's console.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco_api = COCO(json_file)
        except json.JSONDecodeError as e:
            raise ValueError(f"{who}{json_file} is not valid JSON: {e}") from e
    for key in ("images", "categories"):
        if key not in coco_api.dataset:
            raise ValueError(f"{who}{json_file} has no '{key}' list")
    return coco_api


def category_id_map(coco_api: COCO) -> dict[int, int]:
    """COCO category id -> contiguous id in [0, #categories), in increasing COCO id order."""
    return {cat_id: i for i, cat_id in enumerate(sorted(coco_api.getCatIds()))}


def _convert_segmentation(segm) -> list | dict | None:
    """Valid polygons, or compressed RLE; None when nothing usable is left (the instance is
    then dropped, as detectron2 does)."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):
            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Reads a COCO instances json into a list of records.

    Each record: ``{"file_name": image_root/file_name, "height", "width", "image_id",
    "annotations": [{"id", "iscrowd", "bbox" (as stored, XYWH), "bbox_mode": BoxMode.XYWH_ABS,
    "category_id" (contiguous), "segmentation" (polygons or compressed RLE)}]}`` sorted by image
    id. When ``dataset_name`` is given, its metadata gets ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id``. Annotations whose polygons are all degenerate are
    dropped with a counted warning (detectron2's behaviour).
    """
    start = time.perf_counter()
    coco_api = load_coco_api(json_file, dataset_name)
    if not os.path.isdir(image_root):
        who = f"Dataset '{dataset_name}': " if dataset_name else ""
        raise FileNotFoundError(f"{who}image folder not found: {image_root} (annotations: {json_file})")
    id_map = category_id_map(coco_api)
    if not id_map:
        raise ValueError(f"{json_file} defines no categories")
    if dataset_name is not None:
        cats = coco_api.loadCats(sorted(id_map))
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[c["name"] for c in cats], thing_dataset_id_to_contiguous_id=id_map
        )

    seen_ann_ids: set = set()
    num_without_valid_segm = 0
    records = []
    for image_id in sorted(coco_api.imgs):
        img = coco_api.imgs[image_id]
        annotations = []
        for obj in coco_api.imgToAnns.get(image_id, []):
            ann_id = obj.get("id")
            where = f"{json_file}: annotation id {ann_id} (image id {image_id})"
            if ann_id in seen_ann_ids:
                raise ValueError(f"{where}: duplicate annotation id")
            seen_ann_ids.add(ann_id)
            if obj.get("category_id") not in id_map:
                raise ValueError(
                    f"{where}: category_id {obj.get('category_id')!r} is not among the "
                    f"categories {sorted(id_map)}"
                )
            if "bbox" not in obj:
                raise ValueError(f"{where}: no 'bbox'")
            ann = {
                "id": ann_id,
                "iscrowd": obj.get("iscrowd", 0),
                "bbox": obj["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[obj["category_id"]],
            }
            if "segmentation" in obj:
                segm = _convert_segmentation(obj["segmentation"])
                if segm is None:
                    num_without_valid_segm += 1
                    continue
                ann["segmentation"] = segm
            annotations.append(ann)
        records.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": image_id,
                "annotations": annotations,
            }
        )
    if num_without_valid_segm:
        logger.warning(
            f"{json_file}: dropped {num_without_valid_segm} annotations without a valid polygon "
            "(each polygon needs an even number >= 6 of coordinates)"
        )
    logger.info(
        f"Loaded {len(records)} images from {json_file} in {time.perf_counter() - start:.2f}s"
    )
    return records


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Registers a COCO-format dataset: loaded lazily on ``DatasetCatalog.get(name)``.

    Its metadata gets ``json_file``, ``image_root`` and ``evaluator_type="coco"`` plus ``metadata``.
    """
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
