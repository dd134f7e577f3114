"""Image decoding and annotation -> ``Instances`` conversion used by the dataset mapper."""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from ..structures import Instances
from .coco_validation import rle_counts_total
from .transforms import Transform
from .validation import BadDataError, MissingImageError

SUPPORTED_IMAGE_FORMATS = ("BGR", "RGB")


class BoxMode(IntEnum):
    """How a record's ``bbox`` is stored; the values are detectron2's."""

    XYXY_ABS = 0
    XYWH_ABS = 1


def box_to_xyxy(bbox: Any, mode: int) -> np.ndarray:
    box = np.asarray(bbox, dtype=np.float64).reshape(4)
    if mode == BoxMode.XYWH_ABS:
        # Summed in float32 as detectron2's BoxMode.convert sums a record's list (torch's
        # default dtype): boxes, and the crop windows placed on their centres, are AdelaiDet's.
        x, y, w, h = box.astype(np.float32)
        return np.array([x, y, x + w, y + h], dtype=np.float64)
    if mode == BoxMode.XYXY_ABS:
        return box
    raise ValueError(f"Unsupported bbox_mode {mode!r}; expected BoxMode.XYXY_ABS or XYWH_ABS")


def read_image(file_name: str, format: str = "BGR") -> np.ndarray:
    """Decodes an image file to uint8 (H, W, 3) in ``format`` ("BGR" or "RGB").

    cv2's ``IMREAD_COLOR`` decode defines every conversion: the EXIF orientation is applied (as
    detectron2 does), gray is repeated on three channels, an alpha channel is dropped (not
    composited), 16-bit samples keep their high byte (``v >> 8``), and CMYK JPEGs are converted
    to colour by libjpeg. Missing, unreadable, corrupt and truncated files raise
    :class:`BadDataError` (``MissingImageError`` for missing ones) naming the file.
    """
    if format not in SUPPORTED_IMAGE_FORMATS:
        raise ValueError(
            f"INPUT.FORMAT {format!r} is not supported; use one of {SUPPORTED_IMAGE_FORMATS}"
        )
    if not os.path.exists(file_name):
        raise MissingImageError(f"Image file not found: {file_name}")
    try:
        # np.fromfile + imdecode instead of imread: imread returns None without saying why.
        data = np.fromfile(file_name, dtype=np.uint8)
    except OSError as e:
        raise BadDataError(f"Cannot read image file {file_name}: {e}") from e
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:
        image = None
    if image is None:
        raise BadDataError(
            f"Cannot decode image file {file_name} ({data.size} bytes): not an image, or "
            "corrupt or truncated"
        )
    if format == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """Raises if the decoded image's size differs from the one recorded in the dataset."""
    h, w = image.shape[:2]
    expected = (dataset_dict.get("height", h), dataset_dict.get("width", w))
    if expected != (h, w):
        hint = ""
        if expected == (w, h):
            hint = (
                "; the sizes are swapped: the file probably has an EXIF orientation, which is "
                "applied on decoding, so its record must hold the rotated size"
            )
        raise BadDataError(
            f"Image {dataset_dict.get('file_name')} (image_id {dataset_dict.get('image_id')}) "
            f"is {h}x{w} (HxW) but its record says {expected[0]}x{expected[1]}{hint}"
        )


def polygons_to_bitmask(polygons: list, height: int, width: int) -> np.ndarray:
    """Rasterises polygons (flat [x0, y0, ...] each) like COCO: frPyObjects -> merge -> decode."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    polygons = [np.asarray(p, dtype=np.float64).tolist() for p in polygons]
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def segmentation_to_bitmask(segm: Any, height: int, width: int, ann_id: Any = None) -> np.ndarray:
    """Polygons or (compressed / uncompressed) RLE -> bool (height, width) at the record's size."""
    if isinstance(segm, list):
        return polygons_to_bitmask(segm, height, width)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise BadDataError(
                f"Annotation {ann_id}: RLE size {segm['size']} differs from the image size "
                f"{[height, width]}"
            )
        total = rle_counts_total(segm["counts"])
        if total != height * width:
            # pycocotools decodes without bounds checks: such counts would overrun its buffer.
            raise BadDataError(
                f"Annotation {ann_id}: RLE counts are malformed or do not sum to "
                f"{height}x{width} pixels (sum {total})"
            )
        if isinstance(segm["counts"], list):
            segm = mask_util.frPyObjects(segm, height, width)
        return mask_util.decode(segm).astype(bool)
    raise BadDataError(
        f"Annotation {ann_id}: cannot interpret segmentation of type {type(segm).__name__}"
    )


def annotation_box(annotation: dict) -> np.ndarray:
    """The annotation's ``bbox`` as XYXY float64 (4,); a missing one is a BadDataError."""
    if "bbox" not in annotation:
        raise BadDataError(f"Annotation {annotation.get('id')} has no 'bbox'")
    return box_to_xyxy(annotation["bbox"], annotation.get("bbox_mode", BoxMode.XYWH_ABS))


def polygons_box(polygons: list[np.ndarray]) -> np.ndarray:
    """The XYXY bounds of the polygons' vertices (``PolygonMasks.get_bounding_boxes``); zeros
    for no polygon."""
    if not polygons:
        return np.zeros(4)
    xy = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight XYXY box of a bool (H, W) mask's pixels (``BitMasks.get_bounding_boxes``);
    zeros for an empty mask."""
    xs, ys = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def transform_instance_annotation(
    annotation: dict,
    transforms: Transform,
    image_size: tuple[int, int],
    record_size: tuple[int, int],
    with_mask: bool = True,
    recompute_box: bool = False,
    mask_format: str = "polygon",
) -> dict:
    """Moves one annotation into the augmented image: XYXY box (clipped) and a bool mask.

    ``image_size`` is the augmented (H, W), ``record_size`` the original one. Polygons are
    transformed by ``transforms.apply_polygons`` (a crop clips them) and rasterised at the
    augmented size; RLE is decoded at the original size, then cropped, resized (nearest) and
    flipped like the image. ``with_mask=False`` (BoxInst) reads no segmentation, so box-only
    annotations pass, and returns no ``mask``. After a crop the record's box no longer bounds
    the object: ``recompute_box`` (detectron2's ``recompute_boxes``, on with ``INPUT.CROP``)
    takes it from the transformed polygons' vertices when ``mask_format`` is "polygon", as
    detectron2's ``PolygonMasks``, and from the mask's pixels otherwise or for RLE.
    """
    ann_id = annotation.get("id")
    box = transforms.apply_box(annotation_box(annotation)[None])[0].clip(min=0)
    h, w = image_size
    box = np.minimum(box, [w, h, w, h])
    if not with_mask:
        return {"bbox": box, "category_id": int(annotation["category_id"])}
    if "segmentation" not in annotation:
        raise BadDataError(
            f"Annotation {ann_id} has no 'segmentation'; instance segmentation needs a mask "
            "for every non-crowd annotation"
        )
    segm = annotation["segmentation"]
    if isinstance(segm, list):
        for k, polygon in enumerate(segm):
            # load_coco_json drops such polygons; records from elsewhere may still hold them,
            # which pycocotools would read as a box (4 numbers) and shapely refuse.
            if len(polygon) < 6 or len(polygon) % 2:
                raise BadDataError(
                    f"Annotation {ann_id}: polygon {k} has {len(polygon)} coordinates; a polygon "
                    "needs an even number of them, at least 6 (3 points)"
                )
        polygons = transforms.apply_polygons(segm)
        mask = polygons_to_bitmask(polygons, h, w)
    else:
        polygons = None
        mask = segmentation_to_bitmask(segm, *record_size, ann_id=ann_id)
        mask = transforms.apply_segmentation(mask.astype(np.uint8)).astype(bool)
    if recompute_box:
        box = polygons_box(polygons) if polygons is not None and mask_format == "polygon" else mask_box(mask)
    return {"bbox": box, "category_id": int(annotation["category_id"]), "mask": mask}


def annotations_to_instances(
    annotations: list[dict], image_size: tuple[int, int], with_masks: bool = True
) -> Instances:
    """Transformed annotations -> ``Instances(image_size, gt_boxes, gt_classes, gt_masks)``.

    gt_boxes: float32 (N, 4) XYXY; gt_classes: int64 (N,); gt_masks: bool (N, H, W), only
    ``with_masks`` (the annotations' ``mask``; BoxInst has none).
    """
    h, w = image_size
    fields = {}
    if annotations:
        boxes = torch.as_tensor(np.stack([a["bbox"] for a in annotations]), dtype=torch.float32)
    else:
        boxes = torch.zeros((0, 4), dtype=torch.float32)
    if with_masks:
        fields["gt_masks"] = (
            torch.from_numpy(np.stack([a["mask"] for a in annotations]))
            if annotations
            else torch.zeros((0, h, w), dtype=torch.bool)
        )
    classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
    return Instances((h, w), gt_boxes=boxes, gt_classes=classes, **fields)


def is_nonempty(annotation: dict, box_threshold: float = 1e-5) -> bool:
    """detectron2's ``filter_empty_instances`` rule for one transformed annotation: its box has
    width and height above the threshold and its mask (if it has one) has a pixel."""
    x1, y1, x2, y2 = annotation["bbox"]
    has_pixels = "mask" not in annotation or bool(annotation["mask"].any())
    return x2 - x1 > box_threshold and y2 - y1 > box_threshold and has_pixels
