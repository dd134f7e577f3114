"""Bad annotation files at load time, on generated files: each kind of defect under both
DATALOADER.BAD_DATA_POLICY values (refused with the file and record named, or its image left
out), the repairs both policies make, the summary table, and what the evaluator scores."""

import logging
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_test_loader, build_detection_train_loader, load_coco_json
from condinst_percep.data.coco import load_coco_api
from condinst_percep.data.validation import BadDataError, BadDataReport, collect_bad_data
from condinst_percep.evaluation import COCOEvaluator
from condinst_percep.structures import Instances
from tests.reliability.conftest import H, SQUARE, TRIANGLE, W, coco_name, valid_dataset, write_dataset


POLICIES = ("error", "skip")


def _ann(dataset, ann_id):
    return next(a for a in dataset["annotations"] if a.get("id") == ann_id)


def _load(policy, json_file, image_root):
    report = BadDataReport(policy)
    with collect_bad_data(report):
        records = load_coco_json(json_file, image_root)
    return records, report


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
    name = coco_name(json_file, image_root)
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
    name = coco_name(json_file, image_root)
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
    data_cfg.DATASETS.TRAIN = (coco_name(json_file, image_root),)
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
    name = coco_name(json_file, image_root)
    data_cfg.DATASETS.TRAIN = (name,)
    data_cfg.DATALOADER.BAD_DATA_POLICY = "ignore"
    match = r"DATALOADER.BAD_DATA_POLICY must be one of \('error', 'skip'\), got 'ignore'"
    with pytest.raises(ValueError, match=match):
        build_detection_train_loader(data_cfg)
    with pytest.raises(ValueError, match=match):
        build_detection_test_loader(data_cfg, name)


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
