"""Transforms and the dataset mapper: sizes, geometry of boxes vs masks, formats, annotations."""

import copy

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import BoxMode, DatasetMapper
from condinst_percep.data.transforms import RandomFlip, ResizeShortestEdge

H, W = 40, 60
# A concave polygon, with non-integer vertices.
POLYGON = [5.5, 4.0, 50.2, 8.7, 30.0, 20.0, 52.0, 33.3, 8.0, 30.5, 18.0, 18.0]


@pytest.fixture
def record(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, image)
    rle = mask_util.merge(mask_util.frPyObjects([POLYGON], H, W))
    bbox = mask_util.toBbox(rle).tolist()
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    anns = [
        {"id": 1, "bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0,
         "segmentation": [POLYGON]},
        {"id": 2, "bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0,
         "segmentation": rle},
    ]
    return {"file_name": path, "height": H, "width": W, "image_id": 7, "annotations": anns}


def _border(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the mask's boundary."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1067)),
        (640, 480, 800, 1333, (1067, 800)),
        (427, 640, 800, 1333, (800, 1199)),
        (300, 1000, 800, 1333, (400, 1333)),
        (500, 500, 640, 1333, (640, 640)),
        (33, 50, 16, 1000, (16, 24)),
    ],
)
def test_resize_shortest_edge_known_sizes(h, w, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(h, w, short, max_size) == expected


def test_resize_shortest_edge_matches_closed_form():
    rng = np.random.default_rng(1)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(10, 2000, size=2))
        short, max_size = int(rng.integers(100, 1000)), int(rng.integers(1000, 2000))
        scale = min(short / min(h, w), max_size / max(h, w))
        new_h, new_w = ResizeShortestEdge.get_output_shape(h, w, short, max_size)
        assert abs(new_h - h * scale) <= 0.5 + 1e-6 and abs(new_w - w * scale) <= 0.5 + 1e-6
        if max(h, w) * short / min(h, w) <= max_size - 1:
            assert min(new_h, new_w) == short


def test_resize_sampling_styles():
    rng = np.random.default_rng(0)
    choice = ResizeShortestEdge((20, 30, 50), 1000, "choice")
    sizes = {min(choice.get_transform(10, 20, rng).new_h, 999) for _ in range(200)}
    assert sizes == {20, 30, 50}
    ranged = ResizeShortestEdge((20, 23), 1000, "range")
    assert {ranged.get_transform(10, 20, rng).new_h for _ in range(200)} == {20, 21, 22, 23}
    with pytest.raises(ValueError, match="range"):
        ResizeShortestEdge((20, 23, 40), 1000, "range")


def test_polygon_and_rle_of_same_object_agree_after_resize_and_flip(record):
    mapper = DatasetMapper(True, [ResizeShortestEdge((57,), 1000, "choice"), RandomFlip(1.0)])
    out = mapper(record, rng=np.random.default_rng(0))
    inst = out["instances"]
    assert out["image"].shape == (3, 57, 86) and inst.image_size == (57, 86)
    assert inst.gt_masks.dtype == torch.bool and inst.gt_boxes.dtype == torch.float32
    assert inst.gt_classes.tolist() == [2, 1]
    poly_mask, rle_mask = inst.gt_masks[0].numpy(), inst.gt_masks[1].numpy()
    differ = poly_mask ^ rle_mask
    assert differ.sum() < 0.1 * poly_mask.sum()
    assert not (differ & ~_border(poly_mask)).any()
    # Box and mask moved together: the tight box of each mask is within a pixel of the box.
    for k in range(2):
        assert np.abs(_tight_box(inst.gt_masks[k].numpy()) - inst.gt_boxes[k].numpy()).max() <= 1.0


def test_flip_is_exact(record):
    plain = DatasetMapper(True, [])(record)
    flipped = DatasetMapper(True, [RandomFlip(1.0)])(record)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    # RLE masks flip exactly; a flipped polygon is rasterised anew, so only up to its border.
    assert torch.equal(flipped["instances"].gt_masks[1], plain["instances"].gt_masks[1].flip(-1))
    poly_differ = (flipped["instances"].gt_masks[0] ^ plain["instances"].gt_masks[0].flip(-1)).numpy()
    assert not (poly_differ & ~_border(plain["instances"].gt_masks[0].flip(-1).numpy())).any()
    x1, y1, x2, y2 = plain["instances"].gt_boxes.unbind(1)
    expected = torch.stack([W - x2, y1, W - x1, y2], dim=1)
    assert torch.allclose(flipped["instances"].gt_boxes, expected)
    # Unflipped: the box is the recorded XYWH box in XYXY, the mask the rasterised polygon.
    x, y, w, h = record["annotations"][0]["bbox"]
    assert torch.allclose(plain["instances"].gt_boxes[0], torch.tensor([x, y, x + w, y + h]))
    rle = mask_util.frPyObjects([POLYGON], H, W)
    assert np.array_equal(plain["instances"].gt_masks[0].numpy(), mask_util.decode(rle)[..., 0] > 0)


def test_bgr_and_rgb(record):
    bgr = DatasetMapper(False, [], image_format="BGR")(record)["image"]
    rgb = DatasetMapper(False, [], image_format="RGB")(record)["image"]
    on_disk = cv2.imread(record["file_name"])  # BGR
    assert torch.equal(bgr, torch.from_numpy(on_disk).permute(2, 0, 1))
    assert torch.equal(rgb, bgr.flip(0))
    with pytest.raises(ValueError, match="YUV"):
        DatasetMapper(False, [], image_format="YUV")(record)


def test_crowd_dropped_and_empty_instances_filtered(record):
    rec = copy.deepcopy(record)
    rec["annotations"][1]["iscrowd"] = 1
    collinear = [1.0, 1.0, 5.0, 5.0, 9.0, 9.0]
    rec["annotations"].append(
        {"id": 3, "bbox": [1, 1, 0, 0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
         "iscrowd": 0, "segmentation": [collinear]}
    )
    inst = DatasetMapper(True, [])(rec)["instances"]
    assert inst.gt_classes.tolist() == [2]
    rec["annotations"] = []
    empty = DatasetMapper(True, [])(rec)["instances"]
    assert len(empty.gt_classes) == 0 and empty.gt_masks.shape == (0, H, W)


def test_test_mapper_from_config(record):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 20, 1000
    out = DatasetMapper.build(cfg, is_train=False)(record)
    assert "instances" not in out
    assert out["image"].shape == (3, 20, 30) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_id"]) == (H, W, 7)


def test_recorded_size_mismatch_names_the_file(record):
    rec = dict(record, height=H + 1)
    with pytest.raises(ValueError, match="img.png.*image_id 7"):
        DatasetMapper(False, [])(rec)


def test_rle_of_wrong_size_names_annotation(record):
    rec = copy.deepcopy(record)
    rec["annotations"][1]["segmentation"]["size"] = [H, W + 1]
    with pytest.raises(ValueError, match="Annotation 2: RLE size"):
        DatasetMapper(True, [])(rec)
