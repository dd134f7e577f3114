"""``INPUT.CROP`` against AdelaiDet itself: its ``DatasetMapperWithBasis`` and our DatasetMapper,
built from the same config, map the same dataset dicts with the same random draws (np.random
and Python's random seeded alike; ours reads them through :class:`AdelaiDetDraws`) to the same
images, boxes, classes and masks, crop for crop. Peer environment only (skipped where
detectron2 or AdelaiDet is not importable).

Two documented differences are allowed, and checked to be only those: the resize (PIL's
antialiased bilinear there, cv2 here; the images are compared exactly where the resize is the
identity and to a small mean difference elsewhere), and, with ``MASK_FORMAT "polygon"``,
AdelaiDet keeping an instance whose clipped polygon rasterises to no pixel (we drop it).
"""

from __future__ import annotations

import copy
import os
import random

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import BoxMode, DatasetMapper
from condinst_percep.data.transforms import ResizeShortestEdge
from tests.conftest import REPO

from .d2_helpers import ADELAIDET_SKIP_REASON, SKIP_REASON, adelaidet_config

pytest.importorskip("detectron2", reason=SKIP_REASON)
pytest.importorskip("adet", reason=ADELAIDET_SKIP_REASON)

SIZES = [(150, 200), (180, 160), (130, 240)]
SEEDS = range(6)


class AdelaiDetDraws:
    """The ``numpy.random.Generator`` methods our augmentations call, answered from the draws
    AdelaiDet makes for the same quantities: numpy's global legacy state (``rand``,
    ``randint``, ``uniform``) and, for the crop's choice of a box, Python's ``random.choice``."""

    def random(self, size=None):
        return np.random.random_sample(size)

    def integers(self, low, high=None):
        return np.random.randint(low, high)

    def choice(self, n: int) -> int:
        return random.randrange(n)  # what random.choice(seq) draws for len(seq) == n


def _star(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    """A concave polygon with non-integer vertices around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = radius * rng.uniform(0.35, 1.0, 9)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel().tolist()


def _records(root: str, with_rle: bool) -> list[dict]:
    """Textured PNG images (decoded alike by PIL and cv2) with 4-6 objects each, many of them
    near the borders so that crops cut them; polygons (one of two parts), RLE when
    ``with_rle``, and one crowd annotation per image. Boxes are the polygons' XYWH bounds."""
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(SIZES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (5, 5), 1.5)
        path = os.path.join(root, f"{i}.png")
        cv2.imwrite(path, image)
        anns = []
        for k in range(int(rng.integers(4, 7))):
            cx, cy = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
            polygons = [_star(rng, cx, cy, rng.uniform(10, 40))]
            if k == 1:
                polygons.append(_star(rng, w - cx, h - cy, 12))
            xy = np.concatenate([np.reshape(p, (-1, 2)) for p in polygons]).clip(0, [w, h])
            polygons = [np.reshape(p, (-1, 2)).clip(0, [w, h]).ravel().tolist() for p in polygons]
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            segm = polygons
            if with_rle and k % 2 == 0:
                rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
                segm = {"size": [h, w], "counts": rle["counts"].decode()}
            anns.append({
                "id": 10 * i + k, "iscrowd": int(k == 3), "category_id": k % 3,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "bbox_mode": BoxMode.XYWH_ABS, "segmentation": segm,
            })
        records.append({"file_name": path, "height": h, "width": w, "image_id": i, "annotations": anns})
    return records


def _mappers(config: str, opts: list):
    from adet.data.dataset_mapper import DatasetMapperWithBasis

    theirs = DatasetMapperWithBasis(adelaidet_config(config, *opts), is_train=True)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MAX_SIZE_TRAIN", 400, *opts])
    return theirs, DatasetMapper.build(cfg, is_train=True)


def _their_masks(instances, fmt: str) -> torch.Tensor:
    """AdelaiDet's GT masks as bool (N, H, W); polygons rasterised as its CondInst does."""
    from detectron2.data.detection_utils import polygons_to_bitmask

    h, w = instances.image_size
    if fmt == "bitmask":
        return instances.gt_masks.tensor.bool()
    masks = [torch.from_numpy(polygons_to_bitmask(p, h, w)) for p in instances.gt_masks.polygons]
    return torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)


def _compare(theirs: dict, ours: dict, fmt: str | None, exact_image: bool) -> int:
    """Asserts the two mapped dicts agree; returns the number of instances compared."""
    assert ours["image"].shape == theirs["image"].shape
    if exact_image:
        assert torch.equal(ours["image"], theirs["image"])
    else:
        diff = (ours["image"].float() - theirs["image"].float()).abs().mean()
        assert diff < 1, f"mean |diff| {diff:.2f}: more than the resize interpolation (0.2-0.3)"
    t, o = theirs["instances"], ours["instances"]
    assert o.image_size == t.image_size
    if fmt is None:  # BoxInst: boxes only
        assert not o.has("gt_masks")
        keep = torch.ones(len(t), dtype=torch.bool)
    else:
        their_masks = _their_masks(t, fmt)
        # Only polygons that rasterise to nothing may be AdelaiDet's alone (MASK_FORMAT polygon).
        keep = their_masks.flatten(1).any(1)
        assert fmt == "polygon" or bool(keep.all())
        assert torch.equal(o.gt_masks, their_masks[keep])
    assert torch.equal(o.gt_boxes, t.gt_boxes.tensor[keep])
    assert torch.equal(o.gt_classes, t.gt_classes[keep])
    return len(o)


CASES = [
    # (config, crop type, size, crop instance, mask format, exact image)
    ("CondInst/MS_R_50_1x.yaml", "relative_range", [0.3, 0.3], True, "polygon", False),
    ("CondInst/MS_R_50_1x.yaml", "relative_range", [0.3, 0.3], False, "polygon", False),
    ("CondInst/MS_R_50_1x.yaml", "relative", [0.5, 0.6], True, "bitmask", False),
    ("CondInst/MS_R_50_1x.yaml", "absolute_range", [40, 140], False, "bitmask", False),
    # The crop's short side is MIN_SIZE_TRAIN: the resize is the identity, images compare exactly.
    ("CondInst/MS_R_50_1x.yaml", "absolute", [100, 120], True, "polygon", True),
    ("CondInst/MS_R_50_1x.yaml", "absolute", [100, 120], True, "bitmask", True),
    ("CondInst/MS_R_50_1x.yaml", "absolute", [100, 120], False, "polygon", False),
    ("BoxInst/MS_R_50_1x.yaml", "relative_range", [0.3, 0.3], True, None, False),
]


@pytest.mark.parametrize(
    "config, crop_type, size, crop_instance, fmt, exact_image", CASES,
    ids=[f"{c.split('/')[0]}-{t}-{s}-{'cut' if i else 'whole'}-{f}" for c, t, s, i, f, _ in CASES],
)
def test_mapper_matches_adelaidet_crop_for_crop(tmp_path, config, crop_type, size, crop_instance, fmt, exact_image):
    min_size = 100 if exact_image else 128
    opts = [
        "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", crop_type, "INPUT.CROP.SIZE", size,
        "INPUT.CROP.CROP_INSTANCE", crop_instance, "INPUT.MIN_SIZE_TRAIN", (min_size,),
        "INPUT.MASK_FORMAT", fmt or "polygon", "INPUT.HFLIP_TRAIN", True, "INPUT.RANDOM_FLIP", "horizontal",
    ]
    theirs, ours = _mappers(config, opts)
    records = _records(str(tmp_path), with_rle=fmt == "bitmask")
    compared = cut = cropped = 0
    for seed in SEEDS:
        for record in records:
            np.random.seed(seed)
            random.seed(seed)
            t = theirs(copy.deepcopy(record))
            np.random.seed(seed)
            random.seed(seed)
            o = ours(record, rng=AdelaiDetDraws())
            compared += _compare(t, o, fmt, exact_image)
            cut += len(record["annotations"]) - 1 - len(o["instances"])
            uncropped = ResizeShortestEdge.get_output_shape(record["height"], record["width"], min_size, 400)
            cropped += tuple(o["image"].shape[1:]) != uncropped
    assert compared > 0 and cropped > len(SEEDS), (compared, cropped)
    assert cut > 0 or not crop_instance, cut  # crops that may cut instances did cut some away
