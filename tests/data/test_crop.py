"""INPUT.CROP, AdelaiDet's instance-aware random crop, against naive references: polygons
clipped by a Sutherland-Hodgman loop and closed forms, RLE masks against array slicing, the
crop window against the placement and growth rules written out, each TYPE's size against its
formula; edge cases; the config checks; a training step on cropped batches. Crop for crop
against AdelaiDet itself: tests/d2/test_crop_parity.py (peer environment)."""

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from condinst_percep.data import BoxMode, DatasetMapper
from condinst_percep.data.crop import CropTransform, RandomCropWithInstance
from condinst_percep.data.validation import BadDataError

H, W = 60, 80


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_naive(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman against the four window edges: one ring (with zero-width bridges
    where the polygon leaves and re-enters), whose area is that of polygon and window."""
    edges = [(0, x0, 1), (0, x1, -1), (1, y0, 1), (1, y1, -1)]  # (axis, line, inside sign)
    ring = [tuple(p) for p in points]
    for axis, line, sign in edges:
        out = []
        for k, cur in enumerate(ring):
            prev = ring[k - 1]
            cur_in, prev_in = sign * (cur[axis] - line) >= 0, sign * (prev[axis] - line) >= 0
            if cur_in != prev_in:
                t = (line - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(prev[i] + t * (cur[i] - prev[i]) for i in range(2)))
            if cur_in:
                out.append(cur)
        ring = out
        if not ring:
            break
    return np.array(ring, dtype=np.float64).reshape(-1, 2)


def _extreme_points(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The points among which polygon-and-window has its bounds: the polygon's vertices in the
    window, its edges' crossings of the window's sides, the window's corners in the polygon."""
    found = [p for p in points if x0 <= p[0] <= x1 and y0 <= p[1] <= y1]
    for a, b in zip(points, np.roll(points, -1, axis=0)):
        for axis, line, (lo, hi) in ((0, x0, (y0, y1)), (0, x1, (y0, y1)), (1, y0, (x0, x1)), (1, y1, (x0, x1))):
            if (a[axis] - line) * (b[axis] - line) < 0:
                q = a + (line - a[axis]) / (b[axis] - a[axis]) * (b - a)
                if lo <= q[1 - axis] <= hi:
                    found.append(q)
    for corner in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        # Even-odd rule: a ray to the right crosses the polygon's edges an odd number of times.
        crossings = sum(
            (a[1] > corner[1]) != (b[1] > corner[1])
            and corner[0] < a[0] + (corner[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0])
            for a, b in zip(points, np.roll(points, -1, axis=0))
        )
        if crossings % 2:
            found.append(np.array(corner, dtype=np.float64))
    return np.array(found)


def _star(rng: np.random.Generator) -> np.ndarray:
    """A simple, concave polygon inside the 60x80 image, non-integer vertices (N, 2)."""
    # Angle gaps below pi: the ring winds once around the centre without crossing itself.
    angles = (np.arange(9) + rng.uniform(0.1, 0.9, 9)) * 2 * np.pi / 9
    radii = rng.uniform(4, 25, 9)
    cx, cy = rng.uniform(26, W - 26), rng.uniform(26, H - 26)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _image(tmp_path, name="img.png") -> tuple[str, np.ndarray]:
    image = np.random.default_rng(7).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = str(tmp_path / name)
    cv2.imwrite(path, image)
    return path, image


def _window(out: dict, image: np.ndarray) -> tuple[int, int]:
    """The crop window's top-left, found by searching the source image for the output (noise
    images: one position matches)."""
    crop = out["image"].permute(1, 2, 0).numpy()
    h, w = crop.shape[:2]
    hits = [
        (y, x)
        for y in range(image.shape[0] - h + 1)
        for x in range(image.shape[1] - w + 1)
        if np.array_equal(image[y : y + h, x : x + w], crop)
    ]
    assert len(hits) == 1, hits
    return hits[0]


def _ann(ann_id, segm, bbox, category=0, iscrowd=0) -> dict:
    return {"id": ann_id, "bbox": list(map(float, bbox)), "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": category, "iscrowd": iscrowd, "segmentation": segm}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


# --- polygons -------------------------------------------------------------------------------


def test_clipped_polygons_have_the_area_and_bounds_of_a_naive_clip():
    rng = np.random.default_rng(0)
    pieces_seen = set()
    for _ in range(300):
        points = _star(rng)
        x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 40))
        w, h = int(rng.integers(5, W - x0 + 1)), int(rng.integers(5, H - y0 + 1))
        pieces = CropTransform(x0, y0, w, h).apply_polygons([points.ravel()])
        naive = _clip_naive(points, x0, y0, x0 + w, y0 + h)
        area = sum(_shoelace(p.reshape(-1, 2)) for p in pieces)
        assert area == pytest.approx(_shoelace(naive) if len(naive) else 0.0, abs=1e-9)
        pieces_seen.add(len(pieces))
        if pieces:
            xy = np.concatenate([p.reshape(-1, 2) for p in pieces])
            assert xy.min() >= 0 and (xy <= [w, h]).all()  # window coordinates
            extremes = _extreme_points(points, x0, y0, x0 + w, y0 + h) - [x0, y0]
            bounds = np.r_[extremes.min(0), extremes.max(0)]
            np.testing.assert_allclose(np.r_[xy.min(0), xy.max(0)], bounds, atol=1e-9)
    assert {0, 1, 2} <= pieces_seen  # polygons missed, cut, and split in two by the window


def test_triangle_crossing_the_window_edge_closed_form(tmp_path):
    """Triangle (5, 5), (45, 5), (5, 45) cut by the window x >= 20 (an 'absolute' crop that
    spans the full height): area (45 - 20)^2 / 2, vertices' box [0, 5, 25, 30] in the window;
    the box from the mask is the mask's own tight box; the record's box is not used."""
    path, image = _image(tmp_path)
    triangle = [5.0, 5.0, 45.0, 5.0, 5.0, 45.0]
    pieces = CropTransform(20, 0, 60, H).apply_polygons([triangle])
    assert len(pieces) == 1 and _shoelace(pieces[0].reshape(-1, 2)) == pytest.approx(312.5)
    # A far box as the crop's chosen instance puts the window at x0 = 20 = W - 60.
    record = {"file_name": path, "height": H, "width": W, "image_id": 1, "annotations": [
        _ann(1, [triangle], [5, 5, 40, 40]),
        _ann(2, [[70.0, 20.0, 79.0, 20.0, 79.0, 30.0, 70.0, 30.0]], [70, 20, 9, 10], category=1),
    ]}
    crop = RandomCropWithInstance("absolute", (H, 60))
    boxes = {}
    for fmt in ("polygon", "bitmask"):
        mapper = DatasetMapper(True, [crop], recompute_boxes=True, mask_format=fmt)
        for seed in range(40):
            out = mapper(record, np.random.default_rng(seed))
            if _window(out, image) != (0, 20):
                continue
            inst = out["instances"]
            assert inst.gt_classes.tolist() == [0, 1]
            mask = inst.gt_masks[0].numpy()
            assert abs(int(mask.sum()) - 312.5) < 0.5 * 25 * 3  # area, up to the boundary pixels
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            boxes[fmt] = inst.gt_boxes[0].tolist()
            expected = [0.0, 5.0, 25.0, 30.0] if fmt == "polygon" else tight
            assert boxes[fmt] == pytest.approx(expected), fmt
            break
    assert set(boxes) == {"polygon", "bitmask"}


def test_polygon_touching_the_window_only_along_an_edge_is_dropped():
    square = [0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]
    assert CropTransform(10, 0, 30, 30).apply_polygons([square]) == []
    assert CropTransform(10, 10, 30, 30).apply_polygons([square]) == []  # a corner: a point


# --- RLE and bitmask --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_rle_masks_crop_as_array_slices_and_boxes_come_from_their_pixels(tmp_path, fmt):
    path, image = _image(tmp_path)
    rng = np.random.default_rng(3)
    masks = []
    for _ in range(4):
        m = np.zeros((H, W), bool)
        y, x = int(rng.integers(0, H - 15)), int(rng.integers(0, W - 15))
        m[y : y + int(rng.integers(5, 15)), x : x + int(rng.integers(5, 30))] = True
        m[y + 2, :] |= rng.random(W) < 0.2  # a ragged row: the box is not the rectangle's
        masks.append(m)
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        segm = {"size": [H, W], "counts": _uncompressed(m)} if k == 3 else _rle(m)
        anns.append(_ann(k, segm, [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], category=k))
    record = {"file_name": path, "height": H, "width": W, "image_id": 2, "annotations": anns}
    mapper = DatasetMapper(True, [RandomCropWithInstance("relative_range", (0.3, 0.3))],
                           recompute_boxes=True, mask_format=fmt)
    dropped = 0
    for seed in range(12):
        out = mapper(record, np.random.default_rng(seed))
        y0, x0 = _window(out, image)
        h, w = out["image"].shape[1:]
        slices = [m[y0 : y0 + h, x0 : x0 + w] for m in masks]
        kept = [k for k, s in enumerate(slices) if s.any()]
        dropped += len(masks) - len(kept)
        inst = out["instances"]
        assert inst.gt_classes.tolist() == kept
        assert np.array_equal(inst.gt_masks.numpy(), np.stack([slices[k] for k in kept]).reshape(-1, h, w))
        for box, k in zip(inst.gt_boxes.tolist(), kept):
            ys, xs = np.nonzero(slices[k])
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert dropped > 0  # some windows missed some masks entirely


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, changes, flat.size])
    return ([0] if flat[0] else []) + runs.tolist()


# --- the window -------------------------------------------------------------------------------


def test_crop_instance_true_window_reaches_the_centre_and_covers_the_allowed_range():
    """One box, so it is the chosen one: y0 in [max(floor(cy) - ch, 0), min(H - ch, ceil(cy))],
    every value of that range drawn; windows do cut the box."""
    box = np.array([[30.5, 10.2, 50.3, 35.7]])
    crop = RandomCropWithInstance("absolute", (20, 30))
    cy, cx = (10.2 + 35.7) / 2, (30.5 + 50.3) / 2
    rng = np.random.default_rng(0)
    ys, xs, cut = set(), set(), 0
    for _ in range(1500):
        t = crop.get_transform(H, W, rng, box)
        assert (t.h, t.w) == (20, 30)
        assert np.floor(cy) <= t.y0 + t.h and t.y0 <= np.ceil(cy)
        assert np.floor(cx) <= t.x0 + t.w and t.x0 <= np.ceil(cx)
        ys.add(t.y0)
        xs.add(t.x0)
        cut += not (t.x0 <= 30.5 and 50.3 <= t.x0 + t.w and t.y0 <= 10.2 and 35.7 <= t.y0 + t.h)
    assert ys == set(range(max(int(np.floor(cy)) - 20, 0), min(H - 20, int(np.ceil(cy))) + 1))
    assert xs == set(range(max(int(np.floor(cx)) - 30, 0), min(W - 30, int(np.ceil(cx))) + 1))
    assert cut > 0


def _worst_cut(t: CropTransform, boxes: np.ndarray) -> float:
    """Over boxes and axes, min(part inside the window, part outside): 0 for a box the window
    holds whole or misses, its cut for a box the window cuts."""
    worst = 0.0
    for b in boxes:
        for lo, hi, start, size in ((b[0], b[2], t.x0, t.w), (b[1], b[3], t.y0, t.h)):
            inside = max(0.0, min(hi, start + size) - max(lo, start))
            worst = max(worst, min(inside, (hi - lo) - inside))
    return worst


def test_crop_instance_false_grows_the_window_over_every_box_it_cuts():
    """No box straddles a window edge by more than the 2 px that truncating the grown window
    to whole pixels can leave; with CROP_INSTANCE True the same draws do cut boxes."""
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(6):
        x, y = rng.uniform(0, W - 20), rng.uniform(0, H - 15)
        boxes.append([x, y, x + rng.uniform(4, 20), y + rng.uniform(4, 15)])
    boxes = np.array(boxes)
    whole = RandomCropWithInstance("relative_range", (0.2, 0.2), crop_instance=False)
    cut = RandomCropWithInstance("relative_range", (0.2, 0.2), crop_instance=True)
    worst_whole = worst_cut = 0.0
    for seed in range(300):
        t = whole.get_transform(H, W, np.random.default_rng(seed), boxes)
        u = cut.get_transform(H, W, np.random.default_rng(seed), boxes)
        assert t.w >= u.w and t.h >= u.h and t.x0 <= u.x0 and t.y0 <= u.y0  # grown from u
        assert t.x0 + t.w <= W and t.y0 + t.h <= H
        worst_whole = max(worst_whole, _worst_cut(t, boxes))
        worst_cut = max(worst_cut, _worst_cut(u, boxes))
    assert worst_whole < 2.0 + 1e-3
    assert worst_cut > 4.0
    # Boxes reaching outside the image (unchecked records) grow the window only to its border.
    outside = np.array([[-5.5, 10.0, 30.0, 40.0], [50.0, 20.0, 90.0, 65.0]])
    for seed in range(50):
        t = whole.get_transform(H, W, np.random.default_rng(seed), outside)
        assert t.x0 >= 0 and t.y0 >= 0 and t.x0 + t.w <= W and t.y0 + t.h <= H


def test_image_without_boxes_gets_a_uniformly_placed_window():
    crop = RandomCropWithInstance("absolute", (50, 70))
    rng = np.random.default_rng(0)
    starts = {(t.y0, t.x0) for t in (crop.get_transform(H, W, rng, np.zeros((0, 4))) for _ in range(600))}
    assert starts == {(y, x) for y in range(H - 50 + 1) for x in range(W - 70 + 1)}


@pytest.mark.parametrize(
    "crop_type, size, check",
    [
        ("relative", (0.5, 0.25), lambda hs, ws: hs == {30} and ws == {20}),
        ("relative_range", (0.5, 0.25),
         lambda hs, ws: min(hs) >= 30 and max(hs) <= H and min(hs) <= 31 and max(hs) >= 59
         and min(ws) >= 20 and max(ws) <= W and min(ws) <= 22 and max(ws) >= 78),
        ("absolute", (50, 100), lambda hs, ws: hs == {50} and ws == {W}),
        ("absolute_range", (30, 70), lambda hs, ws: hs == set(range(30, H + 1)) and ws == set(range(30, 71))),
    ],
)
def test_each_crop_type_draws_its_sizes(crop_type, size, check):
    crop = RandomCropWithInstance(crop_type, size)
    rng = np.random.default_rng(0)
    drawn = [crop.get_crop_size(H, W, rng) for _ in range(800)]
    assert check({h for h, _ in drawn}, {w for _, w in drawn})
    if crop_type == "relative_range":  # int(side * f + 0.5), f uniform in [size, 1]
        fractions = np.array([(h / H, w / W) for h, w in drawn])
        assert abs(fractions[:, 0].mean() - 0.75) < 0.03 and abs(fractions[:, 1].mean() - 0.625) < 0.03


# --- edge cases in the mapper -----------------------------------------------------------------


def _star_record(path, rng, count=4, **extra) -> dict:
    anns = []
    for k in range(count):
        points = _star(rng)
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        anns.append(_ann(k, [points.ravel().tolist()], [x0, y0, x1 - x0, y1 - y0], category=k % 3))
    return {"file_name": path, "height": H, "width": W, "image_id": 5, "annotations": anns, **extra}


def test_crop_larger_than_the_image_keeps_everything(tmp_path):
    path, image = _image(tmp_path)
    record = _star_record(path, np.random.default_rng(2))
    cropped = DatasetMapper(True, [RandomCropWithInstance("absolute", (500, 500))], recompute_boxes=True)
    plain = DatasetMapper(True, [])
    out, ref = cropped(record, np.random.default_rng(0)), plain(record)
    assert torch.equal(out["image"], ref["image"])
    assert torch.equal(out["instances"].gt_masks, ref["instances"].gt_masks)
    # The boxes are the polygons' vertex bounds (recomputed), which are the records' here.
    torch.testing.assert_close(out["instances"].gt_boxes, ref["instances"].gt_boxes)


def test_all_instances_cut_away_gives_the_empty_image_output(tmp_path):
    """Tiny objects in one corner, a window in the other (chosen: the crowd box there)."""
    path, image = _image(tmp_path)
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    crowd = _ann(9, _rle(np.pad(np.ones((10, 10), bool), ((50, 0), (70, 0)))), [70, 50, 10, 10], iscrowd=1)
    record = {"file_name": path, "height": H, "width": W, "image_id": 6,
              "annotations": [_ann(1, square, [2, 2, 4, 4]), crowd]}
    mapper = DatasetMapper(True, [RandomCropWithInstance("absolute", (20, 20))], recompute_boxes=True)
    empty = mapper({**record, "annotations": []}, np.random.default_rng(0))["instances"]
    outcomes = set()
    for seed in range(20):
        inst = mapper(record, np.random.default_rng(seed))["instances"]
        outcomes.add(len(inst))
        if len(inst) == 0:
            for field in ("gt_boxes", "gt_classes", "gt_masks"):
                a, b = inst.get(field), empty.get(field)
                assert a.shape == b.shape and a.dtype == b.dtype, field
    assert outcomes == {0, 1}  # centred on the crowd box: nothing left; on the square: kept


def test_crowd_boxes_place_the_window_but_never_reach_the_model(tmp_path):
    path, image = _image(tmp_path)
    rng = np.random.default_rng(4)
    record = _star_record(path, rng, count=2)
    mask = np.zeros((H, W), bool)
    mask[0:12, 60:80] = True
    record["annotations"].append(_ann(7, _rle(mask), [60, 0, 20, 12], category=2, iscrowd=1))
    mapper = DatasetMapper(True, [RandomCropWithInstance("absolute", (15, 15))], recompute_boxes=True)
    reached_crowd = 0
    for seed in range(60):
        out = mapper(record, np.random.default_rng(seed))
        y0, x0 = _window(out, image)
        reached_crowd += x0 >= 55 and y0 <= 6  # a window by the crowd box's centre (70, 6)
        assert 2 not in out["instances"].gt_classes.tolist()  # the crowd's category
    assert reached_crowd > 0


def test_boxinst_crop_clips_record_boxes_and_reads_no_masks(tmp_path):
    path, image = _image(tmp_path)
    record = {"file_name": path, "height": H, "width": W, "image_id": 8,
              "annotations": [{"id": 1, "bbox": [10.5, 20.25, 50.0, 30.0], "bbox_mode": BoxMode.XYWH_ABS,
                               "category_id": 0, "iscrowd": 0}]}
    mapper = DatasetMapper(True, [RandomCropWithInstance("absolute", (30, 40))], use_masks=False)
    for seed in range(10):
        out = mapper(record, np.random.default_rng(seed))
        y0, x0 = _window(out, image)
        inst = out["instances"]
        assert not inst.has("gt_masks")
        expected = np.clip(np.array([10.5 - x0, 20.25 - y0, 60.5 - x0, 50.25 - y0]), 0, [40, 30, 40, 30])
        assert inst.gt_boxes[0].tolist() == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="needs use_masks"):
        DatasetMapper(True, [], use_masks=False, recompute_boxes=True)


@pytest.mark.parametrize("polygon", [[1.0, 1.0, 9.0, 1.0], [1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0]])
def test_degenerate_polygon_of_an_unchecked_record_is_refused_naming_it(tmp_path, polygon):
    """load_coco_json drops such polygons; a record from elsewhere gets an error, crop or not."""
    path, _ = _image(tmp_path)
    record = {"file_name": path, "height": H, "width": W, "image_id": 9,
              "annotations": [_ann(41, [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0], polygon], [1, 1, 8, 8])]}
    for augmentations in ([], [RandomCropWithInstance("relative", (0.5, 0.5))]):
        with pytest.raises(BadDataError, match=rf"Annotation 41: polygon 1 has {len(polygon)} coordinates"):
            DatasetMapper(True, augmentations)(record, np.random.default_rng(0))
