"""Load-time checks of a COCO instances json, before anything trains on it.

``read_coco_json`` turns unreadable or malformed files into errors naming the file and the parse
position. ``clean_coco_dataset`` checks every category, image and annotation: defects with one
obvious repair are fixed and counted; the others go to the bad-data policy, which either stops
with an error naming the file and the annotation id or leaves out the whole image holding the
bad record (dropping only the annotation would turn a real object into background).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pycocotools.mask as mask_util

from .coco_exports import (
    PLACEHOLDERS_KEY,
    describe_placeholders,
    fix_box_area,
    fix_file_name,
    fix_rounded_box,
    is_area,
    placeholder_categories,
    warn_crowd_masks,
)
from .validation import BadDataError, BadDataReport


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_coco_json(json_file: str, who: str = "") -> dict:
    """Parses a COCO json; errors name the file and, for bad JSON, the line, column and byte."""
    try:
        with open(json_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadDataError(f"{who}cannot read annotation file {json_file}: {e}") from e
    try:
        dataset = json.loads(raw)
    except json.JSONDecodeError as e:
        hint = ""
        if not raw.strip():
            hint = "; the file is empty"
        elif e.pos >= len(raw.rstrip()) or e.msg.startswith("Unterminated"):
            hint = "; the file ends early (truncated?)"
        raise BadDataError(
            f"{who}{json_file} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}, "
            f"char {e.pos} of {len(raw)}){hint}"
        ) from e
    except UnicodeDecodeError as e:
        raise BadDataError(
            f"{who}{json_file} is not valid JSON: not UTF-8 text (byte {e.start})"
        ) from e
    if not isinstance(dataset, dict):
        raise BadDataError(
            f"{who}{json_file}: the top level is a {type(dataset).__name__}, not an object with "
            "'images' and 'categories'"
        )
    for key in ("images", "categories"):
        if key not in dataset:
            raise BadDataError(f"{who}{json_file} has no '{key}' list")
    for key in ("images", "categories", "annotations"):
        if not isinstance(dataset.get(key, []), list):
            kind = type(dataset[key]).__name__
            raise BadDataError(f"{who}{json_file}: '{key}' is a {kind}, not a list")
    return dataset


def rle_counts_total(counts) -> int | None:
    """Sum of an RLE's run lengths (uncompressed list or COCO's compressed string), or None if
    the counts are malformed. pycocotools decodes without bounds checks, so counts that do not
    sum to height * width must never reach it."""
    if isinstance(counts, list):
        return sum(counts) if all(_is_int(c) and c >= 0 for c in counts) else None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        return None
    # COCO's string format (pycocotools' rleFrString): 5 bits per character, offset by 48, a
    # continuation bit 0x20, a sign bit 0x10 in the last character; from the third count on,
    # each is stored as the difference to the count two places before.
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


def _check_categories(categories: list, json_file: str) -> set[int]:
    # A category cannot be skipped: the class list defines the model's outputs.
    seen: set[int] = set()
    for i, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise BadDataError(
                f"{json_file}: categories[{i}] = {cat!r} needs an integer 'id' and a string 'name'"
            )
        if cat["id"] in seen:
            raise BadDataError(f"{json_file}: category id {cat['id']} appears twice in 'categories'")
        seen.add(cat["id"])
    return seen


def _check_category_names(categories: list, json_file: str) -> None:
    # Two classes of one name would share one per-class AP entry and one label in pictures.
    first: dict[str, int] = {}
    for cat in categories:
        if cat["name"] in first:
            raise BadDataError(
                f"{json_file}: category ids {first[cat['name']]} and {cat['id']} are both named "
                f"{cat['name']!r}; give each class its own name"
            )
        first[cat["name"]] = cat["id"]


def _image_defect(img) -> str | None:
    if not isinstance(img, dict):
        return "image entry is not an object"
    if not _is_int(img.get("id")):
        return "image without an integer 'id'"
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return "image without a 'file_name'"
    h, w = img.get("height"), img.get("width")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        return "image without positive integer 'height' and 'width'"
    return None


def _segmentation_defect(segm, height: int, width: int) -> tuple[str, str] | None:
    if isinstance(segm, list):
        for polygon in segm:
            try:
                # sum() is a C loop: non-numbers raise, NaN or inf make the sum non-finite.
                finite = isinstance(polygon, list) and math.isfinite(sum(polygon))
            except TypeError:
                finite = False
            if not finite:
                return "polygon that is not a list of finite numbers", f": {str(polygon)[:80]}"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if segm["size"] != [height, width]:
            return (
                "RLE size differs from the image size",
                f": RLE size {segm['size']}, image [height, width] = {[height, width]}",
            )
        total = rle_counts_total(segm["counts"])
        if total is None:
            return "malformed RLE counts", ""
        if total != height * width:
            return (
                "RLE counts do not cover the image",
                f": they sum to {total}, the image has {height * width} pixels",
            )
        return None
    return "segmentation is neither polygons nor RLE", f": {type(segm).__name__}"


def _annotation_defect(obj: dict, height: int, width: int, cat_ids: set[int]) -> tuple[str, str] | None:
    """The first defect of an annotation that has no obvious repair, as (reason, detail)."""
    category_id = obj.get("category_id")
    if not (_is_int(category_id) and category_id in cat_ids):
        return (
            "unknown category id",
            f": category_id {category_id!r} is not among the categories {sorted(cat_ids)}",
        )
    if obj.get("iscrowd", 0) not in (0, 1):
        return "iscrowd is not 0 or 1", f": {obj['iscrowd']!r}"
    bbox = obj.get("bbox")
    if bbox is None:
        return "no 'bbox'", ""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return "bbox is not 4 finite numbers", f": {bbox!r}"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return "box of negative width or height", f": bbox (XYWH) {bbox}"
    if w > 0 and h > 0 and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return "box outside the image", f": bbox (XYWH) {bbox}, image {width}x{height} (WxH)"
    if "segmentation" in obj:
        return _segmentation_defect(obj["segmentation"], height, width)
    return None


def _mask_area(segm, height: int, width: int) -> float:
    if isinstance(segm, list):
        return float(mask_util.area(mask_util.merge(mask_util.frPyObjects(segm, height, width))))
    if isinstance(segm["counts"], list):
        segm = mask_util.frPyObjects(segm, height, width)
    return float(mask_util.area(segm))


def _fix_annotation(
    obj: dict, height: int, width: int, report: BadDataReport, where: str, fix_boxes: bool
) -> dict | None:
    """The annotation with its repairs (counted), or None when it is dropped."""
    ann = dict(obj)
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        # detectron2's rule: a polygon needs >= 3 points, i.e. an even number >= 6 of coordinates.
        polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        if not segm:
            report.fixed("segmentation [] (a box without a mask, as CVAT and Label Studio "
                         "export rectangles): annotation dropped", where)
            return None
        if not polygons:
            report.fixed("no polygon with >= 3 points: annotation dropped", where)
            return None
        if len(polygons) < len(segm):
            report.fixed("polygon with < 3 points or odd coordinates removed", where)
            ann["segmentation"] = polygons
    fix_rounded_box(ann, report, where)
    if fix_boxes:
        x, y, w, h = ann["bbox"]
        if w == 0 or h == 0:
            report.fixed("box of zero area: annotation dropped", where)
            return None
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            report.fixed("box clipped to the image", where)
            ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    ann.setdefault("iscrowd", 0)
    # COCOeval reads 'area' for its size ranges; COCO's own area is the mask's.
    segm = ann.get("segmentation")
    if not is_area(ann.get("area")):
        ann["area"] = _mask_area(segm, height, width) if segm else float(ann["bbox"][2] * ann["bbox"][3])
        reason = "no 'area'" if "area" not in obj else "'area' not a number >= 0"
        report.fixed(f"{reason}: computed from the mask (or box)", where)
    elif segm:
        fix_box_area(ann, lambda: _mask_area(segm, height, width), report, where)
    return ann


def clean_coco_dataset(
    dataset: dict, json_file: str, report: BadDataReport, fix_boxes: bool = True
) -> dict:
    """Checks a parsed COCO dict; returns a copy with the fixes applied and, under the "skip"
    policy, without the images that hold a bad record (and their annotations).

    Placeholder categories of labelling tools (:mod:`.coco_exports`) are left out of
    ``categories`` and listed under ``PLACEHOLDERS_KEY``. ``fix_boxes=False`` keeps boxes as written (clipping and zero-area drops are for training;
    the evaluator scores against the json's boxes, as COCO's official numbers do). Category
    defects always raise. Under "error" the first bad image or annotation raises
    :class:`BadDataError` naming the file, the annotation id, the image id and its file name.
    """
    cat_ids = _check_categories(dataset["categories"], json_file)
    placeholders = placeholder_categories(dataset)
    for placeholder in placeholders:
        where = f"{json_file}: {describe_placeholders([placeholder])}"
        report.count("not a class", "placeholder category without annotations", where)
    placeholder_ids = {cat["id"] for cat, _ in placeholders}
    categories = [c for c in dataset["categories"] if c["id"] not in placeholder_ids]
    _check_category_names(categories, json_file)
    images: dict[int, dict] = {}
    dropped: set[int] = set()
    image_ids = Counter(
        img["id"] for img in dataset["images"] if isinstance(img, dict) and _is_int(img.get("id"))
    )
    for i, img in enumerate(dataset["images"]):
        if isinstance(img, dict):
            where = f"{json_file}: image id {img.get('id')!r} ({img.get('file_name')})"
        else:
            where = f"{json_file}: images[{i}]"
        defect = _image_defect(img)
        if defect is None and image_ids[img["id"]] > 1:
            # Its annotations cannot be told apart: all images sharing the id are left out.
            defect = "duplicate image id"
        if defect is not None:
            report.bad(defect, where)
            if isinstance(img, dict) and _is_int(img.get("id")):
                dropped.add(img["id"])
            continue
        images[img["id"]] = fix_file_name(img, report, where)

    annotations = dataset.get("annotations", [])
    ann_ids = Counter(a["id"] for a in annotations if isinstance(a, dict) and _is_int(a.get("id")))
    kept = []
    for i, obj in enumerate(annotations):
        if not isinstance(obj, dict):
            report.bad("annotation entry is not an object", f"{json_file}: annotations[{i}]")
            continue
        ann_id, image_id = obj.get("id"), obj.get("image_id")
        img = images.get(image_id) if _is_int(image_id) else None
        where = f"{json_file}: annotation id {ann_id!r} (image id {image_id!r}"
        where += f", {img['file_name']})" if img else ")"
        if _is_int(image_id) and image_id in dropped:
            continue
        if img is None:
            report.bad("image id not in 'images'", where)
            continue
        if not _is_int(ann_id):
            defect = ("annotation without an integer 'id'", "")
        elif ann_ids[ann_id] > 1:
            defect = ("duplicate annotation id", "")
        else:
            defect = _annotation_defect(obj, img["height"], img["width"], cat_ids)
        if defect is not None:
            report.bad(defect[0], where, defect[1])
            dropped.add(image_id)
            continue
        ann = _fix_annotation(obj, img["height"], img["width"], report, where, fix_boxes)
        if ann is not None:
            kept.append(ann)

    out_images = [img for img_id, img in images.items() if img_id not in dropped]
    report.count(
        "left out", "images holding a bad record", json_file, len(dataset["images"]) - len(out_images)
    )
    out = {
        **dataset,
        "categories": categories,
        "images": out_images,
        "annotations": [a for a in kept if a["image_id"] not in dropped],
    }
    warn_crowd_masks(out["annotations"], json_file)
    if placeholders:
        out[PLACEHOLDERS_KEY] = [cat for cat, _ in placeholders]
    return out
