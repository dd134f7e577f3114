"""Conventions of labelling-tool COCO exports that differ from COCO's own files.

Each is recognised by a narrow signature and either repaired (counted in the bad-data report,
so the summary says what was changed) or stated; none is silent:

- **Placeholder categories.** Roboflow puts the project's name first in ``categories`` (id 0,
  supercategory ``"none"``), as the supercategory of every real class, and no annotation uses
  it; labelme's ``labelme2coco.py`` writes ``_background_`` (id 0) from its labels file. Such a
  category is not a class here: a category that no annotation uses and that is another
  category's supercategory, or is named ``_background_``, is left out of the class list (the
  rule rf-detr adopted for Roboflow files). detectron2 keeps it (Roboflow's detectron2 notebook
  sets "number of classes + 1"); the NUM_CLASSES check names it when the numbers differ by it.
- **``area`` written as the box's.** COCOeval sorts objects into small / medium / large by the
  annotation's ``area``, which COCO defines as the mask's. Roboflow writes ``w * h`` of the box
  (27 % above the mask's on the facade set's median object; 11 % of its test objects in another
  size range). When ``area`` equals the box's and the mask is more than 1 % smaller, ``area``
  becomes the mask's (pycocotools' pixel count, the area COCOeval gives a predicted mask).
- **Box corners rounded.** Roboflow writes the box of a polygon with x and y rounded to whole
  pixels and the exact (fractional) width and height: up to 0.5 px off, which costs a perfect model 6.7
  points of box APs on the facade test set. Such a box becomes the polygon's bounds.
- **Windows paths.** ``file_name`` with backslashes (Label Studio on Windows) is read with "/".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from .validation import BadDataReport

logger = logging.getLogger(__name__)

# The cleaned dataset's key listing the placeholder categories left out of "categories".
PLACEHOLDERS_KEY = "placeholder_categories"
# Names that tools write for a category meaning "no object" (labelme2coco's labels file).
BACKGROUND_NAMES = ("_background_",)
# The mask is "smaller than the box" beyond rasterisation noise when under 99 % of it.
AREA_TOLERANCE = 0.01


def placeholder_categories(dataset: dict) -> list[tuple[dict, str]]:
    """``(category, why)`` for each category that is a tool's placeholder, not a class."""
    used = {a.get("category_id") for a in dataset.get("annotations", []) if isinstance(a, dict)}
    categories = dataset["categories"]
    out = []
    for cat in categories:
        if cat["id"] in used:
            continue
        children = [c for c in categories if c is not cat and c.get("supercategory") == cat["name"]]
        if children:
            out.append((cat, f"the supercategory of {len(children)} categories (Roboflow's project name)"))
        elif cat["name"] in BACKGROUND_NAMES:
            out.append((cat, "a background entry (labelme2coco's labels file)"))
    return out


def describe_placeholders(placeholders: list[tuple[dict, str]]) -> str:
    """"category id 0 'facade' (the supercategory of 10 categories (...), no annotation)"."""
    return ", ".join(
        f"category id {cat['id']} {cat['name']!r} ({why}; no annotation uses it)"
        for cat, why in placeholders
    )


def fix_file_name(img: dict, report: BadDataReport, where: str) -> dict:
    if "\\" not in img["file_name"]:
        return img
    report.fixed("file_name with Windows separators '\\': read with '/'", where)
    return {**img, "file_name": img["file_name"].replace("\\", "/")}


def _polygon_bounds(polygons: list) -> tuple[float, float, float, float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return min(xs), min(ys), max(xs), max(ys)


def fix_rounded_box(ann: dict, report: BadDataReport, where: str) -> None:
    """Replaces a box whose corner is the polygon's rounded to whole pixels (width and height
    exact) by the polygon's bounds, in place."""
    segm = ann.get("segmentation")
    if not (isinstance(segm, list) and segm) or ann.get("iscrowd", 0):
        return
    x1, y1, x2, y2 = _polygon_bounds(segm)
    x, y, w, h = ann["bbox"]
    exact = (x1, y1, x2 - x1, y2 - y1)
    if all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip((x, y, w, h), exact)):
        return
    # Whole-pixel corners with a fractional size: a box from the mask's pixels (pycocotools'
    # toBbox, labelme2coco) has whole-pixel sizes too and is left alone.
    if (
        float(x).is_integer() and float(y).is_integer()
        and not (float(w).is_integer() and float(h).is_integer())
        and abs(x - x1) <= 0.5 + 1e-6 and abs(y - y1) <= 0.5 + 1e-6
        and math.isclose(w, exact[2], abs_tol=1e-3) and math.isclose(h, exact[3], abs_tol=1e-3)
    ):
        ann["bbox"] = [float(v) for v in exact]
        report.fixed("box corner rounded to whole pixels (Roboflow): the polygon's bounds", where)


def fix_box_area(
    ann: dict, mask_area: Callable[[], float], report: BadDataReport, where: str
) -> None:
    """Replaces an ``area`` that is the box's ``w * h`` by ``mask_area()``, in place, when the
    mask is clearly smaller than the box (the mask is only rasterised when the areas agree)."""
    _, _, w, h = ann["bbox"]
    box_area = float(w * h)
    if box_area > 0 and math.isclose(ann["area"], box_area, rel_tol=1e-4, abs_tol=1e-2):
        area = mask_area()
        if area < (1 - AREA_TOLERANCE) * box_area:
            ann["area"] = area
            report.fixed("'area' is the box's, not the mask's (Roboflow): the mask's", where)


def is_area(value) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and bool(np.isfinite(value)) and value >= 0
    )


def warn_crowd_masks(annotations: list[dict], json_file: str) -> None:
    """Warns when CVAT-shaped annotations (they carry CVAT's ``attributes``) are crowd regions:
    CVAT (datumaro) exports every mask (brush) annotation as ``iscrowd 1`` RLE, and COCO's
    crowd regions are neither trained on nor scored, only excused."""
    crowd = [a for a in annotations if a.get("iscrowd") and isinstance(a.get("attributes"), dict)]
    if crowd:
        logger.warning(
            f"{json_file}: {len(crowd)} of {len(annotations)} annotations are 'iscrowd': 1 "
            f"(e.g. annotation id {crowd[0]['id']}) and carry CVAT's 'attributes': CVAT exports "
            "mask (brush) annotations as crowd regions, which are not trained on and only "
            "excuse detections at evaluation. If they are single objects, set their 'iscrowd' "
            "to 0 (or export polygons)"
        )
