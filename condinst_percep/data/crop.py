"""AdelaiDet's instance-aware random crop (``INPUT.CROP.*``): the crop transform and its sampler.

``RandomCropWithInstance`` draws a window size as detectron2's ``RandomCrop`` does (the four
``INPUT.CROP.TYPE`` rules), places the window so that it reaches the centre of one annotation
box chosen at random, and, with ``CROP_INSTANCE`` False, grows it until it cuts no box. It is the
first augmentation, before the resize and the flip. The random draws are AdelaiDet's, in its
order, from the caller's ``numpy.random.Generator``: the window size (``relative_range``: two
uniforms; ``absolute_range``: height, then width), the box (``rng.choice``), then y0 and x0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from .transforms import Augmentation, Transform

CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


class CropTransform(Transform):
    """Keeps ``image[y0:y0 + h, x0:x0 + w]``; coordinates move by (-x0, -y0).

    Polygons are clipped to the window (GEOS through shapely, as fvcore's ``CropTransform``,
    which detectron2 and AdelaiDet use): one polygon may come out as several, or as none.
    """

    def __init__(self, x0: int, y0: int, w: int, h: int) -> None:
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return self.apply_image(mask)

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[np.ndarray]:
        # buffer(0) repairs self-intersecting rings (and turns the window's ring clockwise);
        # both as fvcore does, so GEOS gets the same operands and gives the same vertices.
        window = shapely.box(self.x0, self.y0, self.x0 + self.w, self.y0 + self.h).buffer(0.0)
        clipped = []
        for flat in polygons:
            polygon = shapely.Polygon(np.asarray(flat, dtype=np.float64).reshape(-1, 2)).buffer(0.0)
            if not polygon.is_valid:
                continue
            piece = polygon.intersection(window)
            for part in getattr(piece, "geoms", [piece]):
                # Lines and points (a polygon touching the window's edge) have no area.
                if isinstance(part, shapely.Polygon) and part.is_valid and not part.is_empty:
                    ring = np.asarray(part.exterior.coords)[:-1]  # the ring repeats its start
                    clipped.append(self.apply_coords(ring).reshape(-1))
        return clipped


def crop_size_problem(crop_type: str, size: Sequence[float]) -> str | None:
    """Why ``(crop_type, size)`` is not a valid ``INPUT.CROP`` setting, or None.

    relative: the (h, w) fractions of the image, in (0, 1]; relative_range: each fraction drawn
    from [size, 1]; absolute: (h, w) in pixels, capped by the image; absolute_range: (min, max)
    pixels, each side drawn in [min, max] capped by the image.
    """
    if crop_type not in CROP_TYPES:
        return f"unknown crop type; supported: {', '.join(map(repr, CROP_TYPES))}"
    values = list(size)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return "needs two numbers"
    if crop_type.startswith("relative"):
        if not all(0 < v <= 1 for v in values):
            return f"{crop_type!r} sizes are fractions of the image side, in (0, 1]"
        return None
    if not all(isinstance(v, int) and v > 0 for v in values):
        return f"{crop_type!r} sizes are whole pixels, > 0"
    if crop_type == "absolute_range" and values[0] > values[1]:
        return "'absolute_range' needs (min, max) with min <= max"
    return None


class RandomCropWithInstance(Augmentation):
    """AdelaiDet's ``RandomCropWithInstance`` (see the module docstring).

    The window's top-left (y0, x0) is drawn uniformly from the integers with
    ``floor(c) - size <= y0 <= ceil(c)`` (clamped to the image) for the chosen box's centre c,
    so the window reaches to within a pixel of it; instances may be cut. With
    ``crop_instance=False`` each window edge inside a box (by more than 1e-3) moves out to the
    box's edge, repeatedly, until no box straddles an edge; the window is then truncated to
    whole pixels as in AdelaiDet, which can leave up to 2 px of a box outside. An image without
    boxes gets a window placed uniformly at random (detectron2's ``RandomCrop``; AdelaiDet
    raises there). Boxes are XYXY in the input image; crowd boxes count.
    """

    def __init__(self, crop_type: str, crop_size: Sequence[float], crop_instance: bool = True) -> None:
        problem = crop_size_problem(crop_type, crop_size)
        if problem:
            raise ValueError(f"crop type {crop_type!r}, size {list(crop_size)}: {problem}")
        self.crop_type, self.crop_size, self.crop_instance = crop_type, tuple(crop_size), crop_instance

    def get_crop_size(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        """The window's (height, width) in pixels for an (h, w) image, detectron2's rounding."""
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            # float32 fractions, as detectron2 draws them.
            low = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = low + rng.random(2) * (1 - low)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        low, high = self.crop_size
        ch = int(rng.integers(min(h, low), min(h, high) + 1))
        cw = int(rng.integers(min(w, low), min(w, high) + 1))
        return ch, cw

    def get_transform(
        self, h: int, w: int, rng: np.random.Generator, boxes: np.ndarray | None = None
    ) -> CropTransform:
        ch, cw = self.get_crop_size(h, w, rng)
        boxes = np.zeros((0, 4)) if boxes is None else np.array(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            y0 = int(rng.integers(h - ch + 1))
            return CropTransform(int(rng.integers(w - cw + 1)), y0, cw, ch)
        box = boxes[int(rng.choice(len(boxes)))]
        # Clipped in place: the growing below sees the chosen box clipped, as in AdelaiDet.
        box[0::2] = np.clip(box[0::2], 0, w)
        box[1::2] = np.clip(box[1::2], 0, h)
        centre_yx = np.array([(box[1] + box[3]) * 0.5, (box[0] + box[2]) * 0.5])
        size = np.array([ch, cw], dtype=np.int32)
        low = np.maximum(np.floor(centre_yx).astype(np.int32) - size, 0)
        high = np.maximum(np.array([h, w], dtype=np.int32) - size, 0)
        high = np.minimum(high, np.ceil(centre_yx).astype(np.int32))
        y0 = int(rng.integers(low[0], high[0] + 1))
        x0 = int(rng.integers(low[1], high[1] + 1))
        if self.crop_instance:
            return CropTransform(x0, y0, cw, ch)
        x0, y0, size = grow_to_boxes(x0, y0, size.astype(np.float32), boxes)
        # Only boxes reaching outside the image (records that skipped load_coco_json's checks)
        # can grow the window past it, where a negative x0 would make the slicing wrap around.
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        return CropTransform(x0, y0, min(int(size[1]), w - x0), min(int(size[0]), h - y0))


def grow_to_boxes(
    x0: float, y0: float, size: np.ndarray, boxes: np.ndarray, eps: float = 1e-3
) -> tuple[float, float, np.ndarray]:
    """Moves each edge of the window (x0, y0, size = float32 [h, w]) that lies inside a box out
    to that box's edge, pass after pass, until none does. Ends: an edge only moves outwards, to
    one of finitely many box edges. The number types are AdelaiDet's (``size`` float32, summed
    in place, then truncated; x0, y0 ints until they move), and so is the order (per box: left,
    right, top, bottom), so the windows are the same to the pixel."""
    start = [y0, x0]  # indexed like size: 0 = y, 1 = x
    moved = True
    while moved:
        moved = False
        end = [start[0] + size[0], start[1] + size[1]]
        for box in boxes:
            for axis in (1, 0):
                low, high = box[1 - axis], box[3 - axis]
                if low < start[axis] - eps and high > start[axis] + eps:
                    size[axis] += start[axis] - low
                    start[axis], moved = low, True
                if low < end[axis] - eps and high > end[axis] + eps:
                    size[axis] += high - end[axis]
                    end[axis], moved = high, True
    return start[1], start[0], size
