"""COCO-format json -> detectron2-style dataset dicts, through pycocotools."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import time

import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from .catalog import DatasetCatalog, MetadataCatalog
from .coco_exports import PLACEHOLDERS_KEY
from .coco_validation import clean_coco_dataset, read_coco_json
from .detection_utils import BoxMode
from .validation import BadDataReport, active_report

logger = logging.getLogger(__name__)

# Dataset names of this form need no registration (see register_coco_name).
COCO_NAME_PREFIX = "coco:"


@contextlib.contextmanager
def _gc_paused():
    """Pauses the cyclic garbage collector: a parsed json is millions of acyclic objects, and
    every collection triggered while building the records would walk all of them (it made
    loading a 140k-annotation json 2x slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_coco_api(
    json_file: str,
    dataset_name: str | None = None,
    report: BadDataReport | None = None,
    fix_boxes: bool = True,
) -> COCO:
    """A pycocotools ``COCO`` of the json after :func:`clean_coco_dataset` (``report`` holds the
    policy; by default "error"). Missing files and bad JSON raise errors naming the file."""
    who = f"Dataset '{dataset_name}': " if dataset_name else ""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{who}annotation file not found: {json_file}")
    report = report if report is not None else BadDataReport("error")
    coco_api = COCO()
    # pycocotools prints progress to stdout; keep it out of the user's console.
    with _gc_paused(), contextlib.redirect_stdout(io.StringIO()):
        dataset = read_coco_json(json_file, who)
        coco_api.dataset = clean_coco_dataset(dataset, json_file, report, fix_boxes)
        coco_api.createIndex()
    return coco_api


def category_id_map(coco_api: COCO) -> dict[int, int]:
    """COCO category id -> contiguous id in [0, #categories), in increasing COCO id order."""
    return {cat_id: i for i, cat_id in enumerate(sorted(coco_api.getCatIds()))}


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Reads a COCO instances json into a list of records, checked by :func:`clean_coco_dataset`.

    Each record: ``{"file_name": image_root/file_name, "height", "width", "image_id",
    "annotations": [{"id", "iscrowd", "bbox" (XYWH, clipped to the image), "bbox_mode":
    BoxMode.XYWH_ABS, "category_id" (contiguous), "segmentation" (polygons or compressed RLE)}]}``
    sorted by image id. When ``dataset_name`` is given, its metadata gets ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id`` and ``placeholder_categories`` (the tool placeholders
    left out of the classes, see :mod:`.coco_exports`). Defects go to the active :class:`BadDataReport`
    (see :func:`collect_bad_data`); without one, to an "error"-policy report whose summary is
    logged here.
    """
    start = time.perf_counter()
    report = active_report()
    own_report = report is None
    if own_report:
        report = BadDataReport("error")
    with _gc_paused():
        records = _load_records(json_file, image_root, dataset_name, report)
    _note_images_without_objects(records, report, json_file)
    if own_report and report.counts:
        report.log(logger, f"Bad data in {json_file}")
    logger.info(
        f"Loaded {len(records)} images from {json_file} in {time.perf_counter() - start:.2f}s"
    )
    return records


def _load_records(
    json_file: str, image_root: str, dataset_name: str | None, report: BadDataReport
) -> list[dict]:
    coco_api = load_coco_api(json_file, dataset_name, report)
    if not os.path.isdir(image_root):
        who = f"Dataset '{dataset_name}': " if dataset_name else ""
        raise FileNotFoundError(f"{who}image folder not found: {image_root} (annotations: {json_file})")
    id_map = category_id_map(coco_api)
    if not id_map:
        raise ValueError(f"{json_file} defines no categories")
    if dataset_name is not None:
        cats = coco_api.loadCats(sorted(id_map))
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[c["name"] for c in cats],
            thing_dataset_id_to_contiguous_id=id_map,
            **{PLACEHOLDERS_KEY: coco_api.dataset.get(PLACEHOLDERS_KEY, [])},
        )

    records = []
    for image_id in sorted(coco_api.imgs):
        img = coco_api.imgs[image_id]
        annotations = [_record_annotation(obj, id_map) for obj in coco_api.imgToAnns.get(image_id, [])]
        records.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": image_id,
                "annotations": annotations,
            }
        )
    return records


def _record_annotation(obj: dict, id_map: dict[int, int]) -> dict:
    ann = {
        "id": obj["id"],
        "iscrowd": obj["iscrowd"],
        "bbox": obj["bbox"],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": id_map[obj["category_id"]],
    }
    if "segmentation" in obj:
        segm = obj["segmentation"]
        if isinstance(segm, dict) and isinstance(segm["counts"], list):
            # Uncompressed RLE (COCO's crowd format) -> compressed.
            segm = mask_util.frPyObjects(segm, *segm["size"])
        ann["segmentation"] = segm
    return ann


def _note_images_without_objects(records: list[dict], report: BadDataReport, json_file: str) -> None:
    """Counts images without annotations and crowd-only images: kept (the test set needs every
    image); training leaves them out when DATALOADER.FILTER_EMPTY_ANNOTATIONS is on."""
    empty = [r for r in records if not r["annotations"]]
    crowd_only = [
        r for r in records if r["annotations"] and all(a["iscrowd"] for a in r["annotations"])
    ]
    for reason, found in (("image without annotations", empty), ("crowd-only image", crowd_only)):
        if found:
            report.note(reason, len(found), f"{json_file}: image id {found[0]['image_id']}")


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Registers a COCO-format dataset: loaded lazily on ``DatasetCatalog.get(name)``.

    Its metadata gets ``json_file``, ``image_root`` and ``evaluator_type="coco"`` plus ``metadata``.
    """
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def register_coco_name(name: str) -> None:
    """Registers a ``coco:JSON_FILE:IMAGE_ROOT`` name (split at the last colon)."""
    json_file, sep, image_root = name[len(COCO_NAME_PREFIX) :].rpartition(":")
    if not sep or not json_file or not image_root:
        raise KeyError(
            f"Dataset name '{name}' is not of the form '{COCO_NAME_PREFIX}JSON_FILE:IMAGE_ROOT'"
        )
    register_coco_instances(name, {}, json_file, image_root)


DatasetCatalog.register_prefix(
    COCO_NAME_PREFIX,
    register_coco_name,
    "register_coco_instances(name, {}, json_file, image_root) or name it "
    f"'{COCO_NAME_PREFIX}JSON_FILE:IMAGE_ROOT'",
)
