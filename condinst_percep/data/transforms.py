"""Geometric transforms and the augmentations that sample them (detectron2 semantics, cv2 only).

A transform is deterministic and knows the input size; an augmentation draws a transform from a
``numpy.random.Generator``, so the caller controls the randomness (the training loader seeds one
generator per sample, which makes the augmented data independent of the number of workers).

Coordinates are continuous pixel coordinates: the pixel (i, j) covers [j, j+1) x [i, i+1), so a
horizontal flip maps x to ``width - x`` and a resize scales x by ``new_w / w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


class Transform:
    """Base class: images are HWC (or HW) numpy arrays, coords are float arrays (N, 2) of x, y."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        """Transforms a (H, W) uint8 label/binary mask without mixing labels."""
        raise NotImplementedError

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) XYXY -> the axis-aligned box around the four transformed corners."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        corners = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each polygon is a flat array [x0, y0, x1, y1, ...]."""
        return [
            self.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
            for p in polygons
        ]


class NoOpTransform(Transform):
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return mask


class ResizeTransform(Transform):
    """Resizes (h, w) to (new_h, new_w).

    Images use bilinear interpolation when enlarging and area averaging when shrinking (cv2's
    bilinear does not low-pass filter, which would alias; detectron2 uses PIL's antialiased
    bilinear). Masks use centre-aligned nearest neighbour, the same pixel choice as PIL's.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects an image of size {(self.h, self.w)}, got {image.shape[:2]}"
            )
        shrink = self.new_h * self.new_w < self.h * self.w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (self.new_w, self.new_h), interpolation=interp)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return cv2.resize(mask, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST_EXACT)


class FlipTransform(Transform):
    """Mirrors an image of size (h, w) horizontally or vertically."""

    def __init__(self, h: int, w: int, horizontal: bool = True) -> None:
        self.h, self.w, self.horizontal = h, w, horizontal

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        flipped = image[:, ::-1] if self.horizontal else image[::-1]
        return np.ascontiguousarray(flipped)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        if self.horizontal:
            coords[:, 0] = self.w - coords[:, 0]
        else:
            coords[:, 1] = self.h - coords[:, 1]
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return self.apply_image(mask)


class TransformList(Transform):
    """Transforms applied in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            mask = t.apply_segmentation(mask)
        return mask

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[np.ndarray]:
        # Each transform's own rule: a crop clips polygons, which coordinates alone cannot.
        polygons = list(polygons)
        for t in self.transforms:
            polygons = t.apply_polygons(polygons)
        return polygons


class Augmentation:
    """Draws a :class:`Transform` for an image of size (h, w).

    ``boxes`` are the image's annotation boxes, float64 (N, 4) XYXY in that image's
    coordinates, for augmentations that place themselves by the instances (the crop); the
    others ignore them.
    """

    def get_transform(
        self, h: int, w: int, rng: np.random.Generator, boxes: np.ndarray | None = None
    ) -> Transform:
        raise NotImplementedError


SAMPLE_STYLES = ("choice", "range")


class ResizeShortestEdge(Augmentation):
    """Scales the shorter side to a sampled length, capped so the longer side is <= ``max_size``.

    ``sample_style="choice"`` picks one of ``short_edge_length``; ``"range"`` draws an integer
    uniformly from the closed interval ``[short_edge_length[0], short_edge_length[1]]``. A sampled
    length of 0 means no resize (detectron2's convention for ``MIN_SIZE_TEST = 0``).
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = 2**31 - 1,
        sample_style: str = "range",
    ) -> None:
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        self.short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style not in SAMPLE_STYLES:
            raise ValueError(f"sample_style must be one of {SAMPLE_STYLES}, got {sample_style!r}")
        if sample_style == "range" and len(self.short_edge_length) != 2:
            raise ValueError(
                "sample_style='range' needs exactly two short edge lengths (min, max), got "
                f"{self.short_edge_length}"
            )
        if not self.short_edge_length:
            raise ValueError("ResizeShortestEdge needs at least one short edge length")
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def get_transform(
        self, h: int, w: int, rng: np.random.Generator, boxes: np.ndarray | None = None
    ) -> Transform:
        if self.sample_style == "range":
            size = int(rng.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(self.short_edge_length[int(rng.integers(len(self.short_edge_length)))])
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """detectron2's rounding: scale in floating point, cap by ``max_size``, round half up."""
        scale = short_edge_length / min(h, w)
        if h < w:
            new_h, new_w = float(short_edge_length), scale * w
        else:
            new_h, new_w = scale * h, float(short_edge_length)
        if max(new_h, new_w) > max_size:
            scale = max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)


class RandomFlip(Augmentation):
    """Flips with probability ``prob``, horizontally or vertically."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip probability must be in [0, 1], got {prob}")
        self.prob, self.horizontal = prob, horizontal

    def get_transform(
        self, h: int, w: int, rng: np.random.Generator, boxes: np.ndarray | None = None
    ) -> Transform:
        if rng.random() < self.prob:
            return FlipTransform(h, w, self.horizontal)
        return NoOpTransform()


def apply_augmentations(
    augmentations: Sequence[Augmentation],
    image: np.ndarray,
    rng: np.random.Generator,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, TransformList]:
    """Samples each augmentation on the image it will see and applies it; returns both.

    ``boxes`` (N, 4) XYXY in ``image`` are moved through each transform, so every augmentation
    sees them in its own input image (detectron2's ``AugInput``).
    """
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    transforms = []
    for aug in augmentations:
        t = aug.get_transform(image.shape[0], image.shape[1], rng, boxes)
        image = t.apply_image(image)
        boxes = t.apply_box(boxes)
        transforms.append(t)
    return image, TransformList(transforms)
