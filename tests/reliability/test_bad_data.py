"""Bad data on generated files: each defect of issue 6 under both DATALOADER.BAD_DATA_POLICY
values, image decoding conversions, deterministic replacement at map time, empty test sets and
batches of very different sizes."""

import json
import logging
import math
import os
import re

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torch import nn

from condinst_percep.config import get_cfg
from condinst_percep.data import (
    DatasetMapper,
    MapDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    load_coco_json,
    read_image,
)
from condinst_percep.data.coco import load_coco_api
from condinst_percep.data.samplers import GroupedBatchSampler, TrainingSampler
from condinst_percep.data.transforms import ResizeShortestEdge
from condinst_percep.data.validation import (
    BadDataError,
    BadDataReport,
    MissingImageError,
    collect_bad_data,
)
from condinst_percep.evaluation import COCOEvaluator, inference_on_dataset
from condinst_percep.structures import Instances
from tests.reliability.conftest import (
    H,
    SQUARE,
    TRIANGLE,
    W,
    jpeg_with_exif_orientation,
    random_image,
    valid_dataset,
    write_dataset,
)

POLICIES = ("error", "skip")


def _ann(dataset, ann_id):
    return next(a for a in dataset["annotations"] if a.get("id") == ann_id)


def _load(policy, json_file, image_root):
    report = BadDataReport(policy)
    with collect_bad_data(report):
        records = load_coco_json(json_file, image_root)
    return records, report


def _name(json_file, image_root):
    return f"coco:{json_file}:{image_root}"


class _EmptyPredictor(nn.Module):
    """Stands in for a model: no detection on any image."""

    def __init__(self):
        super().__init__()
        self.num_calls = 0

    def forward(self, batched_inputs):
        self.num_calls += 1
        outputs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            outputs.append({"instances": Instances(
                (h, w), pred_boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                pred_classes=torch.zeros(0, dtype=torch.int64),
                pred_masks=torch.zeros(0, h, w, dtype=torch.bool),
            )})
        return outputs


# --------------------------------------------------------------------------------- JSON files


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "make_bytes, match",
    [
        (lambda good: good[: len(good) // 2],
         r"\(line 1, column \d+, char \d+ of \d+\); the file ends early"),
        (lambda good: good.replace(b'"images"', b"'images'", 1),
         r"Expecting property name enclosed in double quotes \(line 1, column 2, char 1 of \d+\)"),
        (lambda good: b"", r"char 0 of 0\); the file is empty"),
        (lambda good: b'{"images": [], \x80}', r"not UTF-8 text \(byte 15\)"),
        (lambda good: b"[1, 2]", "the top level is a list"),
        (lambda good: b'{"images": []}', "has no 'categories' list"),
        (lambda good: b'{"images": {}, "categories": []}', "'images' is a dict, not a list"),
    ],
    ids=["truncated", "malformed", "empty", "not_utf8", "list", "no_categories", "images_dict"],
)
def test_bad_json_names_file_and_position(tmp_path, policy, make_bytes, match):
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    with open(json_file, "rb") as f:
        good = f.read()
    with open(json_file, "wb") as f:
        f.write(make_bytes(good))
    with pytest.raises(BadDataError, match=re.escape(json_file) + ".*" + match):
        _load(policy, json_file, image_root)


# --------------------------------------------------------------------- records without a repair


def _drop_height(ds):
    del ds["images"][0]["height"]


def _delete(key, ann_id):
    return lambda ds: _ann(ds, ann_id).pop(key)


def _set(ann_id, **kw):
    return lambda ds: _ann(ds, ann_id).update(kw)


RLE_33 = mask_util.encode(np.asfortranarray(np.ones((H, W + 1), np.uint8)))
RLE_33 = {"size": RLE_33["size"], "counts": RLE_33["counts"].decode()}

# (mutation, error text after "<json>: ", image ids left under "skip", counted reason)
RECORD_CASES = {
    "unknown_category": (
        _set(12, category_id=9),
        r"annotation id 12 \(image id 2, 2.png\): unknown category id: category_id 9 is not "
        r"among the categories \[1, 2\]",
        [1, 3], "unknown category id",
    ),
    "duplicate_annotation_id": (
        _set(23, id=12),
        r"annotation id 12 \(image id 2, 2.png\): duplicate annotation id",
        [1], "duplicate annotation id",
    ),
    "duplicate_image_id": (
        lambda ds: ds["images"][2].update(id=2),
        r"image id 2 \(2.png\): duplicate image id",
        [1], "duplicate image id",
    ),
    "annotation_of_unknown_image": (
        _set(11, image_id=99),
        r"annotation id 11 \(image id 99\): image id not in 'images'",
        [1, 2, 3], "image id not in 'images'",
    ),
    "image_without_height": (
        _drop_height,
        r"image id 1 \(1.png\): image without positive integer 'height' and 'width'",
        [2, 3], "image without positive integer 'height' and 'width'",
    ),
    "annotation_without_id": (
        _delete("id", 21),
        r"annotation id None \(image id 1, 1.png\): annotation without an integer 'id'",
        [2, 3], "annotation without an integer 'id'",
    ),
    "negative_box": (
        _set(11, bbox=[4.0, 4.0, -3.0, 10.0]),
        r"annotation id 11 \(image id 1, 1.png\): box of negative width or height: "
        r"bbox \(XYWH\) \[4.0, 4.0, -3.0, 10.0\]",
        [2, 3], "box of negative width or height",
    ),
    "box_outside_image": (
        _set(13, bbox=[40.0, 4.0, 5.0, 5.0]),
        r"annotation id 13 \(image id 3, 3.png\): box outside the image: .*image 32x24 \(WxH\)",
        [1, 2], "box outside the image",
    ),
    "box_not_finite": (
        _set(11, bbox=[4.0, 4.0, float("nan"), 10.0]),
        r"annotation id 11 .*bbox is not 4 finite numbers: \[4.0, 4.0, nan, 10.0\]",
        [2, 3], "bbox is not 4 finite numbers",
    ),
    "no_bbox": (_delete("bbox", 11), r"annotation id 11 .*no 'bbox'", [2, 3], "no 'bbox'"),
    "iscrowd_2": (_set(11, iscrowd=2), r"annotation id 11 .*iscrowd is not 0 or 1: 2", [2, 3],
                  "iscrowd is not 0 or 1"),
    "polygon_not_numbers": (
        _set(12, segmentation=[[4, 4, "x", 4, 14, 14]]),
        r"annotation id 12 .*polygon that is not a list of finite numbers",
        [1, 3], "polygon that is not a list of finite numbers",
    ),
    "rle_wrong_size": (
        _set(12, segmentation=RLE_33),
        r"annotation id 12 \(image id 2, 2.png\): RLE size differs from the image size: "
        r"RLE size \[24, 33\], image \[height, width\] = \[24, 32\]",
        [1, 3], "RLE size differs from the image size",
    ),
    "rle_counts_short": (
        _set(12, segmentation={"size": [H, W], "counts": [10, 5, 3]}, iscrowd=1),
        r"annotation id 12 .*RLE counts do not cover the image: they sum to 18, the image has "
        r"768 pixels",
        [1, 3], "RLE counts do not cover the image",
    ),
    "rle_counts_malformed": (
        _set(12, segmentation={"size": [H, W], "counts": "!!"}),
        r"annotation id 12 .*malformed RLE counts",
        [1, 3], "malformed RLE counts",
    ),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_record_errors_or_skips_its_image(tmp_path, case):
    mutate, message, kept_ids, reason = RECORD_CASES[case]
    dataset = valid_dataset()
    mutate(dataset)
    json_file, image_root = write_dataset(tmp_path, dataset)
    with pytest.raises(BadDataError, match=re.escape(json_file) + ": " + message):
        _load("error", json_file, image_root)
    records, report = _load("skip", json_file, image_root)
    assert [r["image_id"] for r in records] == kept_ids
    assert report.counts[("skipped", reason)] >= 1
    assert report.counts[("left out", "images holding a bad record")] == 3 - len(kept_ids)
    # Images that are kept keep every annotation the json gives them.
    for r in records:
        expected = {a["id"] for a in dataset["annotations"] if a.get("image_id") == r["image_id"]}
        assert {a["id"] for a in r["annotations"]} == expected


def test_evaluator_ground_truth_leaves_out_the_same_images(tmp_path):
    """Under "skip" the evaluator scores only the images the loader kept, and survives a polygon
    pycocotools cannot rasterise (its COCOeval raises on a 2-coordinate polygon)."""
    dataset = valid_dataset()
    _ann(dataset, 13)["category_id"] = 9
    _ann(dataset, 21)["segmentation"] = [[1.0, 2.0]]
    json_file, image_root = write_dataset(tmp_path, dataset)
    name = _name(json_file, image_root)
    cfg = get_cfg()
    cfg.DATALOADER.BAD_DATA_POLICY, cfg.DATALOADER.NUM_WORKERS = "skip", 0
    cfg.INPUT.MIN_SIZE_TEST = 0
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.reset()
    for inputs in build_detection_test_loader(cfg, name):
        x = inputs[0]
        square = mask_util.decode(mask_util.frPyObjects([SQUARE], H, W))[..., 0].astype(bool)
        triangle = mask_util.decode(mask_util.frPyObjects([TRIANGLE], H, W))[..., 0].astype(bool)
        keep = [True, x["image_id"] != 1]  # image 1's triangle was dropped (no valid polygon)
        boxes = torch.tensor([[4.0, 4.0, 14.0, 14.0], [18.0, 6.0, 28.0, 18.0]])[keep]
        masks = torch.from_numpy(np.stack([square, triangle]))[keep]
        classes = torch.tensor([0, 1])[keep]
        instances = Instances((H, W), pred_boxes=boxes, scores=torch.ones(len(boxes)),
                              pred_classes=classes, pred_masks=masks)
        evaluator.process(inputs, [{"instances": instances}])
    results = evaluator.evaluate()
    assert evaluator._coco_api.getImgIds() == [1, 2]
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


# ----------------------------------------------------------------------- records with a repair


@pytest.mark.parametrize("policy", POLICIES)
def test_repairs_are_the_same_under_both_policies(tmp_path, policy):
    dataset = valid_dataset()
    _ann(dataset, 11)["segmentation"] = [[1, 2, 3, 4], list(SQUARE), [1, 2, 3, 4, 5, 6, 7]]
    _ann(dataset, 21)["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
    _ann(dataset, 12)["bbox"] = [4.0, 4.0, 0.0, 10.0]
    _ann(dataset, 22)["bbox"] = [-2.0, 6.0, 40.0, 30.0]
    del _ann(dataset, 13)["area"]
    json_file, image_root = write_dataset(tmp_path, dataset)
    records, report = _load(policy, json_file, image_root)
    assert [r["image_id"] for r in records] == [1, 2, 3]
    anns = {a["id"]: a for r in records for a in r["annotations"]}
    assert sorted(anns) == [11, 13, 22, 23]
    assert anns[11]["segmentation"] == [SQUARE]
    assert anns[22]["bbox"] == [0.0, 6.0, 32.0, 18.0]
    assert dict(report.counts) == {
        ("fixed", "polygon with < 3 points or odd coordinates removed"): 1,
        ("fixed", "no polygon with >= 3 points: annotation dropped"): 1,
        ("fixed", "box of zero area: annotation dropped"): 1,
        ("fixed", "box clipped to the image"): 1,
        ("fixed", "no 'area': computed from the mask (or box)"): 1,
    }
    # The square's area is its 10 x 10 pixels; the evaluator's view keeps boxes as written.
    coco = load_coco_api(json_file, report=BadDataReport(policy), fix_boxes=False)
    assert coco.anns[13]["area"] == 100.0
    assert coco.anns[22]["bbox"] == [-2.0, 6.0, 40.0, 30.0] and 12 in coco.anns


def test_empty_and_crowd_only_images_kept_for_test_left_out_of_training(tmp_path, data_cfg, caplog):
    dataset = valid_dataset()
    dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] != 2]
    for a in dataset["annotations"]:
        a["iscrowd"] = int(a["image_id"] == 3)
    json_file, image_root = write_dataset(tmp_path, dataset)
    name = _name(json_file, image_root)
    data_cfg.DATASETS.TRAIN = (name,)
    with caplog.at_level(logging.INFO, logger="condinst_percep.data"):
        loader = build_detection_train_loader(data_cfg)
    summary = [r.getMessage() for r in caplog.records if "Bad-data summary" in r.getMessage()]
    assert len(summary) == 1
    assert re.search(r"kept +\| image without annotations +\| +1 \|", summary[0])
    assert re.search(r"kept +\| crowd-only image +\| +1 \|", summary[0])
    batches = [b for _, b in zip(range(2), loader)]
    assert {x["image_id"] for b in batches for x in b} == {1}
    assert [x[0]["image_id"] for x in build_detection_test_loader(data_cfg, name)] == [1, 2, 3]
    data_cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    data_cfg.SOLVER.IMS_PER_BATCH = 3
    data_cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    batch = next(iter(build_detection_train_loader(data_cfg)))
    sizes = {x["image_id"]: len(x["instances"]) for x in batch}
    assert sizes == {1: 2, 2: 0, 3: 0}


def test_summary_table_counts_skips_once_before_training(tmp_path, data_cfg, caplog):
    dataset = valid_dataset()
    _ann(dataset, 12)["category_id"] = 9
    _ann(dataset, 13)["bbox"] = [4.0, 4.0, -1.0, 1.0]
    _ann(dataset, 11)["bbox"] = [4.0, 4.0, 30.0, 10.0]
    json_file, image_root = write_dataset(tmp_path, dataset)
    data_cfg.DATASETS.TRAIN = (_name(json_file, image_root),)
    data_cfg.DATALOADER.BAD_DATA_POLICY = "skip"
    with caplog.at_level(logging.INFO, logger="condinst_percep.data"):
        loader = build_detection_train_loader(data_cfg)
    summary = [r for r in caplog.records if "Bad-data summary" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    text = summary[0].getMessage()
    assert "'skip'): 2 bad records skipped (2 images left out), 1 fixed" in text
    for row in (r"skipped +\| unknown category id +\| +1",
                r"skipped +\| box of negative width or height +\| +1",
                r"left out +\| images holding a bad record +\| +2",
                r"fixed +\| box clipped to the image +\| +1"):
        assert re.search(row, text), row
    assert {x["image_id"] for x in next(iter(loader))} == {1}


def test_policy_value_is_checked(tmp_path, data_cfg):
    assert get_cfg().DATALOADER.BAD_DATA_POLICY == "error"
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    name = _name(json_file, image_root)
    data_cfg.DATASETS.TRAIN = (name,)
    data_cfg.DATALOADER.BAD_DATA_POLICY = "ignore"
    match = r"DATALOADER.BAD_DATA_POLICY must be one of \('error', 'skip'\), got 'ignore'"
    with pytest.raises(ValueError, match=match):
        build_detection_train_loader(data_cfg)
    with pytest.raises(ValueError, match=match):
        build_detection_test_loader(data_cfg, name)


# --------------------------------------------------------------------------- image decoding


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_gray_rgba_and_16bit_images_become_3_channel_uint8(tmp_path, fmt):
    bgr = random_image(0)
    gray = bgr[..., 0]
    noise = np.random.default_rng(1).integers(0, 256, bgr.shape).astype(np.uint16)
    deep = bgr.astype(np.uint16) * 256 + noise
    alpha = np.random.default_rng(2).integers(0, 256, (H, W, 1), dtype=np.uint8)
    cases = {
        "gray.png": (gray, np.repeat(gray[..., None], 3, axis=2)),
        "bgra.png": (np.concatenate([bgr, alpha], axis=2), bgr),  # alpha dropped, not composited
        "deep.png": (deep, bgr),  # 16-bit: the high byte
        "deep_gray.png": (deep[..., 0], np.repeat(bgr[..., :1], 3, axis=2)),
    }
    for file_name, (pixels, expected_bgr) in cases.items():
        path = str(tmp_path / file_name)
        assert cv2.imwrite(path, pixels)
        image = read_image(path, fmt)
        expected = expected_bgr if fmt == "BGR" else expected_bgr[..., ::-1]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3), file_name
        assert np.array_equal(image, expected), file_name


def test_cmyk_jpeg_is_converted_to_colour(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = (200, 50, 30)
    rgb[:, 16:] = (20, 180, 240)
    path = str(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path, "RGB")
    assert image.shape == (16, 32, 3)
    assert np.abs(image.astype(int) - rgb).max() <= 3


def _orient(image, orientation):
    """EXIF orientation -> the displayed image (the TIFF/EXIF spec, as PIL's exif_transpose)."""
    return {
        1: image,
        2: image[:, ::-1],
        3: image[::-1, ::-1],
        4: image[::-1],
        5: image.transpose(1, 0, 2),
        6: np.rot90(image, k=-1),
        7: image[::-1, ::-1].transpose(1, 0, 2),
        8: np.rot90(image, k=1),
    }[orientation]


def test_exif_orientation_is_applied_and_record_size_checked(tmp_path):
    image = random_image(4, 20, 30)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    plain = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    for orientation in range(1, 9):
        path = str(tmp_path / f"o{orientation}.jpg")
        with open(path, "wb") as f:
            f.write(jpeg_with_exif_orientation(jpeg, orientation))
        assert np.array_equal(read_image(path), _orient(plain, orientation)), orientation
    rotated = {"file_name": str(tmp_path / "o6.jpg"), "image_id": 6, "height": 30, "width": 20,
               "annotations": []}
    assert DatasetMapper(False, [])(rotated)["image"].shape == (3, 30, 20)
    with pytest.raises(BadDataError, match=r"o6.jpg \(image_id 6\) is 30x20 \(HxW\) but its record "
                       r"says 20x30; the sizes are swapped: the file probably has an EXIF orientation"):
        DatasetMapper(False, [])(dict(rotated, height=20, width=30))


# -------------------------------------------------------------------- map-time file failures


def _break_image(path, kind):
    """Replaces the image at ``path`` by a bad file of ``kind``."""
    os.remove(path)
    good = random_image(2, 60, 80)
    content = {
        "zero_bytes": b"",
        "not_an_image": b"this is not an image" * 10,
        "truncated_jpeg": cv2.imencode(".jpg", good)[1].tobytes()[:2000],
        "truncated_png": cv2.imencode(".png", good)[1].tobytes()[:5000],
        "wrong_size": cv2.imencode(".png", random_image(2, H + 2, W))[1].tobytes(),
    }
    if kind == "directory":
        os.mkdir(path)
    elif kind != "missing":
        with open(path, "wb") as f:
            f.write(content[kind])


BAD_FILE_ERRORS = {
    "missing": r"Image file not found: .*2.png",
    "directory": r"Cannot read image file .*2.png: \[Errno 21\] Is a directory",
    "zero_bytes": r"Cannot decode image file .*2.png \(0 bytes\)",
    "not_an_image": r"Cannot decode image file .*2.png \(200 bytes\): not an image, or corrupt",
    "truncated_jpeg": r"Cannot decode image file .*2.png \(2000 bytes\)",
    "truncated_png": r"Cannot decode image file .*2.png \(5000 bytes\)",
    "wrong_size": r"2.png \(image_id 2\) is 26x32 \(HxW\) but its record says 24x32",
}


@pytest.fixture
def bad_image_dataset(tmp_path, request):
    """Three images, the second one broken in the way the test's parameter names."""
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    _break_image(os.path.join(image_root, "2.png"), request.param)
    return request.param, _name(json_file, image_root)


def _expected_files(seed, bad_index, num_samples, size=3):
    """The files the train loader must yield: the sampler's stream, each bad index replaced by
    the first good index drawn from default_rng([seed, rank, k, attempt])."""
    sampler = GroupedBatchSampler(TrainingSampler(size, seed=seed, rank=0, world_size=1), 1)
    files, num_skips = [], 0
    for (index, key), _ in zip((b[0] for b in sampler), range(num_samples)):
        attempt = 1
        while index == bad_index:
            index = int(np.random.default_rng([*key, attempt]).integers(size))
            attempt += 1
            num_skips += 1
        files.append(f"{index + 1}.png")
    return files, num_skips


@pytest.mark.parametrize("bad_image_dataset", list(BAD_FILE_ERRORS), indirect=True)
def test_bad_image_file_errors_or_is_replaced_deterministically(bad_image_dataset, data_cfg, caplog):
    kind, name = bad_image_dataset
    data_cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(BadDataError, match=BAD_FILE_ERRORS[kind]) as e:
        for _, batch in zip(range(10), build_detection_train_loader(data_cfg)):
            pass
    assert isinstance(e.value, MissingImageError) == (kind == "missing")

    data_cfg.DATALOADER.BAD_DATA_POLICY = "skip"
    with caplog.at_level(logging.WARNING, logger="condinst_percep.data"):
        batches = [b for _, b in zip(range(6), build_detection_train_loader(data_cfg))]
    files = [os.path.basename(x["file_name"]) for b in batches for x in b]
    expected_files, num_skips = _expected_files(data_cfg.SEED, 1, 12)
    assert files == expected_files and "2.png" not in files
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped: ")]
    assert len(skips) == num_skips > 0
    assert all(re.search(BAD_FILE_ERRORS[kind] + ".*; replaced by dataset index", s) for s in skips)
    # Resuming at iteration 3 gives the uninterrupted run's batches 3..5, augmentations included.
    resumed = [b for _, b in zip(range(3), build_detection_train_loader(data_cfg, start_iter=3))]
    for a, b in zip(batches[3:], resumed):
        assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))

    # Inference: the bad image gives an empty batch, the others are predicted.
    model = _EmptyPredictor()
    with caplog.at_level(logging.WARNING):
        results = inference_on_dataset(
            model, build_detection_test_loader(data_cfg, name), COCOEvaluator(name, distributed=False)
        )
    assert model.num_calls == 2 and results["bbox"]["AP"] == 0.0
    assert "1 of 3 images of" in caplog.text and "got no output" in caplog.text
    data_cfg.DATALOADER.BAD_DATA_POLICY = "error"
    with pytest.raises(BadDataError, match=BAD_FILE_ERRORS[kind]):
        list(build_detection_test_loader(data_cfg, name))


def test_map_time_annotation_error_names_the_file_and_skip_replaces(tmp_path):
    """A record from a non-COCO source (no load-time checks): RLE counts that would overrun
    pycocotools' buffer are refused by the mapper."""
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, random_image(0))
    good = {"file_name": path, "image_id": 1, "height": H, "width": W, "annotations": []}
    bad = dict(good, image_id=2, annotations=[
        {"id": 5, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": [0, H * W + 1000]}}])
    mapper = DatasetMapper(True, [])
    with pytest.raises(BadDataError, match=r"a.png \(image id 2\): Annotation 5: RLE counts are "
                       r"malformed or do not sum to 24x32 pixels \(sum 1768\)"):
        MapDataset([good, bad], mapper, "error")[1, (0, 0, 0)]
    skipping = MapDataset([good, bad], mapper, "skip")
    first = np.random.default_rng([0, 0, 0, 1]).integers(2)
    out = skipping[1, (0, 0, 0)]
    assert first == 0 and out["image_id"] == 1 and skipping.num_skipped == 1
    with pytest.raises(BadDataError, match="16 bad samples in a row"):
        MapDataset([bad], mapper, "skip")[0, (0, 0, 0)]


# ------------------------------------------------------------------ empty list, mixed sizes


def test_empty_image_list_inference_works_training_refuses(tmp_path, data_cfg, caplog):
    json_file, image_root = write_dataset(tmp_path, valid_dataset(num_images=0))
    name = _name(json_file, image_root)
    loader = build_detection_test_loader(data_cfg, name)
    assert len(loader) == 0
    out_dir = tmp_path / "out"
    model = _EmptyPredictor()
    with caplog.at_level(logging.WARNING):
        evaluator = COCOEvaluator(name, str(out_dir), distributed=False)
        results = inference_on_dataset(model, loader, evaluator)
    assert model.num_calls == 0
    assert set(results) == {"bbox", "segm"}
    assert all(math.isnan(v) for task in results.values() for v in task.values())
    assert "has no images: every AP is NaN" in caplog.text
    with open(out_dir / "coco_instances_results.json") as f:
        assert json.load(f) == []
    data_cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(ValueError, match=re.escape(f"Dataset '{name}' is empty: training needs")):
        build_detection_train_loader(data_cfg)


def test_batch_of_very_different_sizes(tmp_path, data_cfg):
    sizes = [(8, 8), (16, 300), (300, 16), (120, 90), (5, 7)]
    dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    for i, (h, w) in enumerate(sizes, start=1):
        dataset["images"].append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        x1, y1, x2, y2 = w / 4, h / 4, 3 * w / 4, 3 * h / 4
        dataset["annotations"].append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
             "iscrowd": 0, "area": 1.0, "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    json_file, image_root = write_dataset(tmp_path, dataset)
    name = _name(json_file, image_root)
    data_cfg.DATASETS.TRAIN = (name,)
    data_cfg.SOLVER.IMS_PER_BATCH = 5
    data_cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    data_cfg.INPUT.HFLIP_TRAIN = False
    batch = next(iter(build_detection_train_loader(data_cfg)))
    assert sorted(x["image_id"] for x in batch) == [1, 2, 3, 4, 5]
    for x in batch:
        h, w = sizes[x["image_id"] - 1]
        expected = ResizeShortestEdge.get_output_shape(h, w, 24, 64)
        inst = x["instances"]
        assert tuple(x["image"].shape) == (3, *expected) and x["image"].dtype == torch.uint8
        assert inst.image_size == expected and tuple(inst.gt_masks.shape) == (1, *expected)
        ys, xs = torch.nonzero(inst.gt_masks[0], as_tuple=True)
        assert len(ys) > 0
        box = inst.gt_boxes[0]
        assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1
        assert ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1
    test_batches = list(build_detection_test_loader(data_cfg, name))
    assert [len(b) for b in test_batches] == [1] * 5
    for (x,) in test_batches:
        h, w = sizes[x["image_id"] - 1]
        assert tuple(x["image"].shape) == (3, *ResizeShortestEdge.get_output_shape(h, w, 24, 64))
        assert (x["height"], x["width"]) == (h, w)
    # Without test resizing, images smaller than the largest FPN stride reach the model as they are.
    data_cfg.INPUT.MIN_SIZE_TEST = 0
    shapes = [tuple(b[0]["image"].shape[1:]) for b in build_detection_test_loader(data_cfg, name)]
    assert shapes == sizes


def test_replacement_is_independent_of_the_number_of_workers(tmp_path, data_cfg):
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    os.remove(os.path.join(image_root, "2.png"))
    data_cfg.DATASETS.TRAIN = (_name(json_file, image_root),)
    data_cfg.DATALOADER.BAD_DATA_POLICY = "skip"
    runs = []
    for workers in (0, 2):
        data_cfg.DATALOADER.NUM_WORKERS = workers
        runs.append([b for _, b in zip(range(4), build_detection_train_loader(data_cfg))])
    for a, b in zip(*runs):
        assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    data_cfg.DATALOADER.BAD_DATA_POLICY = "error"
    with pytest.raises(MissingImageError, match="2.png .*'skip' would replace this sample"):
        for _ in zip(range(4), build_detection_train_loader(data_cfg)):
            pass


@pytest.mark.parametrize("policy", POLICIES)
def test_bad_categories_stop_under_both_policies(tmp_path, policy):
    dataset = valid_dataset()
    del dataset["categories"][0]["id"]
    json_file, image_root = write_dataset(tmp_path / "no_id", dataset)
    with pytest.raises(BadDataError, match=re.escape(
            f"{json_file}: categories[0] = {{'name': 'a'}} needs an integer 'id' and a string 'name'")):
        _load(policy, json_file, image_root)
    dataset = valid_dataset()
    dataset["categories"][1]["id"] = 1
    json_file, image_root = write_dataset(tmp_path / "twice", dataset)
    with pytest.raises(BadDataError, match=f"{re.escape(json_file)}: category id 1 appears twice"):
        _load(policy, json_file, image_root)
