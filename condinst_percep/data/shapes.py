"""A synthetic COCO-format instance segmentation set of filled shapes, generated on first use.

Each image has a textured, noisy background and 1..``max_objects`` shapes (circle, rectangle,
triangle, ellipse) of varied size, colour, rotation and position, painted in order so later
shapes occlude earlier ones; every annotation's mask is the *visible* part of its shape. About
half the annotations store polygons (traced from the visible mask), the others compressed RLE
(always RLE when the visible part has a hole, which a polygon list cannot express). ``bbox`` and
``area`` are computed from the stored segmentation, so they agree with what a reader decodes.

Generation is deterministic: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
Sets live under ``$CONDINST_PERCEP_CACHE/shapes/`` (default ``~/.cache/condinst_percep/shapes``),
one folder per parameter set; a folder is written under a temporary name and renamed into place,
so concurrent processes never see a partial set, and a set with missing files is regenerated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "rectangle", "triangle", "ellipse")
# Bump when the generator's output changes, so caches of older versions are not reused.
GENERATOR_VERSION = 2
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.3


def shapes_cache_root() -> str:
    root = os.environ.get("CONDINST_PERCEP_CACHE", os.path.join("~", ".cache", "condinst_percep"))
    return os.path.join(os.path.expanduser(root), "shapes")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Base colour + linear gradient + random stripes + blurred noise, float32 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    gx, gy = rng.uniform(-40, 40, size=2) / max(h, w)
    image = base + ((gx * xx + gy * yy)[..., None] * rng.uniform(0.5, 1.0, size=3)).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period)
        image += (np.sin(phase)[..., None] * rng.uniform(-20, 20, size=3)).astype(np.float32)
    noise = rng.standard_normal(size=(h, w, 3), dtype=np.float32) * 25
    image += cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(0.8, 2.5)))
    return image


def _shape_mask(rng: np.random.Generator, class_idx: int, h: int, w: int) -> np.ndarray:
    """The full (unoccluded) uint8 mask of one shape, clipped to the image."""
    mask = np.zeros((h, w), dtype=np.uint8)
    size = rng.uniform(0.15, 0.55) * min(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    angle = rng.uniform(0, 180)
    name = SHAPE_CLASSES[class_idx]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(2, round(size / 2)), 1, thickness=-1)
    elif name == "ellipse":
        axes = (max(2, round(size / 2)), max(1, round(size / 2 / rng.uniform(1.7, 2.8))))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, angle, 0, 360, 1, thickness=-1)
    elif name == "rectangle":
        rect = ((cx, cy), (size, size * rng.uniform(0.45, 1.0)), angle)
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
    else:
        # Vertices spread around the circle so the triangle is never a sliver.
        angles = np.deg2rad(angle + np.array([0, 120, 240]) + rng.uniform(-25, 25, size=3))
        pts = np.stack([cx + size / 2 * np.cos(angles), cy + size / 2 * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _distinct_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - mean).max() > 70:
            break
    return colour.astype(np.float32)


def render_scene(
    rng: np.random.Generator, h: int, w: int, max_objects: int
) -> tuple[np.ndarray, list[int], list[np.ndarray], list[np.ndarray]]:
    """Draws one image.

    Returns the uint8 BGR image (h, w, 3), and per kept object in painting order its class
    index, its full mask and its visible mask (bool (h, w): the full mask minus every later one).
    An object is kept only if, after all later objects are painted, at least
    ``MIN_VISIBLE_PIXELS`` and ``MIN_VISIBLE_FRACTION`` of it stay visible.
    """
    image = _background(rng, h, w)
    classes: list[int] = []
    full: list[np.ndarray] = []
    labels = np.zeros((h, w), dtype=np.int32)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            class_idx = int(rng.integers(len(SHAPE_CLASSES)))
            mask = _shape_mask(rng, class_idx, h, w).astype(bool)
            trial = labels.copy()
            trial[mask] = len(full) + 1
            areas = np.bincount(trial.ravel(), minlength=len(full) + 2)[1:]
            full_areas = np.array([m.sum() for m in full] + [mask.sum()])
            enough = (areas >= MIN_VISIBLE_PIXELS) & (areas >= MIN_VISIBLE_FRACTION * full_areas)
            if enough.all():
                classes.append(class_idx)
                full.append(mask)
                labels = trial
                break
    for mask in full:
        colour = _distinct_colour(rng, image)
        sigma = rng.uniform(2, 12)
        image[mask] = colour + sigma * rng.standard_normal(size=(int(mask.sum()), 3), dtype=np.float32)
    visible = [labels == k + 1 for k in range(len(full))]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), classes, full, visible


def _polygons(visible: np.ndarray) -> list[list[float]] | None:
    """Outer contours through pixel centres; None when the region has a hole or is too thin."""
    contours, hierarchy = cv2.findContours(
        visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None or (hierarchy[0][:, 3] != -1).any():
        return None
    polygons = [(c.reshape(-1, 2) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]
    return polygons or None


def _segmentation(rng: np.random.Generator, visible: np.ndarray) -> tuple[list | dict, dict]:
    """A polygon list (about half the time, when it describes the region well) or compressed
    RLE; also returns the RLE of what the stored segmentation decodes to."""
    h, w = visible.shape
    rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
    if rng.random() < 0.5:
        polygons = _polygons(visible)
        if polygons is not None:
            poly_rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
            iou = mask_util.iou([poly_rle], [rle], [0])[0, 0]
            if iou >= 0.75:
                return polygons, poly_rle
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}, rle


def generate_shapes(
    output_dir: str,
    num_images: int,
    min_size: int = 128,
    max_size: int = 192,
    seed: int = 0,
    max_objects: int = 4,
) -> str:
    """Writes ``output_dir/images/*.jpg`` and ``output_dir/annotations.json``; returns the json path.

    Image heights and widths are drawn independently from [min_size, max_size].
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"Need 0 < min_size <= max_size, got {min_size}, {max_size}")
    if num_images < 1 or max_objects < 1:
        raise ValueError(f"num_images and max_objects must be >= 1, got {num_images}, {max_objects}")
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        h, w = (int(s) for s in rng.integers(min_size, max_size + 1, size=2))
        image, classes, _, visible = render_scene(rng, h, w, max_objects)
        file_name = f"{i:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"cv2 could not encode {file_name}")
        buf.tofile(os.path.join(image_dir, file_name))
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for class_idx, vis in zip(classes, visible):
            segmentation, rle = _segmentation(rng, vis)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": class_idx + 1,
                    "segmentation": segmentation,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    dataset = {
        "info": {
            "description": "condinst_percep synthetic shapes",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "size_range": [min_size, max_size],
            "max_objects": max_objects,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(SHAPE_CLASSES)
        ],
    }
    json_file = os.path.join(output_dir, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file


def _is_complete(folder: str) -> bool:
    json_file = os.path.join(folder, "annotations.json")
    if not os.path.isfile(json_file):
        return False
    try:
        with open(json_file) as f:
            images = json.load(f)["images"]
    except (OSError, ValueError, KeyError):
        return False
    return all(os.path.isfile(os.path.join(folder, "images", im["file_name"])) for im in images)


def ensure_shapes(folder: str, **params) -> tuple[str, str]:
    """Generates the set into ``folder`` unless a complete one is there; returns (json, images).

    Safe under concurrency: each process generates into its own temporary folder and renames it
    into place; a process that loses the race discards its copy and uses the winner's.
    """
    json_file, image_root = os.path.join(folder, "annotations.json"), os.path.join(folder, "images")
    if _is_complete(folder):
        return json_file, image_root
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    logger.info(f"Generating the shapes set {params} into {folder}")
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.tmp-")
    try:
        generate_shapes(tmp, **params)
        if os.path.exists(folder) and not _is_complete(folder):
            trash = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.old-")
            try:
                os.replace(folder, os.path.join(trash, "set"))
            except OSError:
                pass  # another process moved the incomplete set away first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _is_complete(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"Generated the shapes set in {time.perf_counter() - start:.1f}s")
    return json_file, image_root


def register_shapes(
    name: str,
    num_images: int,
    min_size: int = 128,
    max_size: int = 192,
    seed: int = 0,
    max_objects: int = 4,
) -> None:
    """Registers a shapes set; it is generated (or found in the cache) on first ``get``."""
    params = dict(
        num_images=num_images, min_size=min_size, max_size=max_size, seed=seed, max_objects=max_objects
    )
    key = f"v{GENERATOR_VERSION}-n{num_images}-s{min_size}-{max_size}-o{max_objects}-seed{seed}"
    folder = os.path.join(shapes_cache_root(), key)

    def load() -> list[dict]:
        json_file, image_root = ensure_shapes(folder, **params)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPE_CLASSES),
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(SHAPE_CLASSES))},
        json_file=os.path.join(folder, "annotations.json"),
        image_root=os.path.join(folder, "images"),
        evaluator_type="coco",
    )
