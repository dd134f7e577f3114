"""Labelling-tool exports (tests/data/tool_exports.py): each tool's quirks handled or refused by
name, and every export's ground truth, fed back as predictions, scores exactly 100 box and mask
AP through COCOEvaluator. References: pycocotools' own COCOeval on the raw files, numpy bounds
and pycocotools' raster areas."""

import contextlib
import copy
import io
import json
import logging
import os
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from condinst_percep.data import DatasetCatalog, MetadataCatalog, load_coco_json
from condinst_percep.data.coco import load_coco_api
from condinst_percep.data.detection_utils import segmentation_to_bitmask
from condinst_percep.data.validation import BadDataError, BadDataReport, collect_bad_data
from condinst_percep.evaluation import COCOEvaluator
from condinst_percep.evaluation.coco_evaluation import evaluate_predictions_on_coco
from condinst_percep.structures import Instances

from . import tool_exports
from .tool_exports import EXPORTS, H, W, write_export


def _name(json_file, image_root):
    return f"coco:{json_file}:{image_root}"


def _load(json_file, image_root, policy="error"):
    report = BadDataReport(policy)
    with collect_bad_data(report):
        records = load_coco_json(json_file, image_root, _name(json_file, image_root))
    return records, report


def _load_export(tmp_path, dataset: dict):
    """Writes ``dataset``, loads it; returns (records, report, metadata)."""
    json_file, image_root = write_export(tmp_path, dataset)
    records, report = _load(json_file, image_root)
    return records, report, MetadataCatalog.get(_name(json_file, image_root))


def _instances(record: dict) -> Instances:
    """A record's non-crowd annotations as predictions of score 1 (boxes XYXY, bool masks)."""
    anns = [a for a in record["annotations"] if not a["iscrowd"]]
    h, w = record["height"], record["width"]
    boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)],
                         dtype=torch.float32).reshape(-1, 4)
    masks = [torch.from_numpy(segmentation_to_bitmask(a["segmentation"], h, w)) for a in anns]
    return Instances(
        (h, w), pred_boxes=boxes, scores=torch.ones(len(anns)),
        pred_classes=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        pred_masks=torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
    )


def score_ground_truth(name: str) -> dict:
    """COCOEvaluator's results for the dataset's own ground truth fed back as predictions."""
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": _instances(record)}])
    return evaluator.evaluate()


@pytest.mark.parametrize("tool", list(EXPORTS))
def test_ground_truth_scores_100(tmp_path, tool):
    json_file, image_root = write_export(tmp_path, EXPORTS[tool]())
    results = score_ground_truth(_name(json_file, image_root))
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75", "AP-a", "AP-b"):
            assert results[task][metric] == 100.0, (task, metric)


def _pycocotools_gt_score(dataset: dict, iou_type: str) -> float:
    """pycocotools alone: the json's annotations as results of score 1 against the json."""
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                    "bbox": a["bbox"], "segmentation": gt.annToRLE(a)}
                   for a in dataset["annotations"]]
        if iou_type == "segm":
            for r in results:
                del r["bbox"]
        coco_eval = COCOeval(gt, gt.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats[0] * 100


def test_annotation_id_0_is_a_miss_in_cocoeval_and_renumbered(tmp_path):
    """pycocotools' COCOeval on Roboflow's ids (from 0) scores the json's own annotations below
    100: a match to annotation 0 reads as "no match". From 1 it scores 100; so does ours."""
    dataset = tool_exports.label_studio(windows_paths=False)
    for iou_type in ("bbox", "segm"):
        assert _pycocotools_gt_score(dataset, iou_type) < 100
    shifted = copy.deepcopy(dataset)
    for a in shifted["annotations"]:
        a["id"] += 1
    for iou_type in ("bbox", "segm"):
        assert _pycocotools_gt_score(shifted, iou_type) == pytest.approx(100)
    json_file, image_root = write_export(tmp_path, dataset)
    gt = load_coco_api(json_file, report=BadDataReport("skip"), fix_boxes=False)
    with pytest.raises(ValueError, match="annotation id <= 0: COCOeval records 'no match' as 0"):
        evaluate_predictions_on_coco(gt, [], "bbox")
    assert score_ground_truth(_name(json_file, image_root))["bbox"]["AP"] == 100.0


def test_roboflow_placeholder_area_and_rounded_boxes(tmp_path):
    dataset = tool_exports.roboflow()
    records, report, metadata = _load_export(tmp_path, dataset)
    assert metadata.thing_classes == ["a", "b"]
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert [c["id"] for c in metadata.placeholder_categories] == [0]
    n = len(dataset["annotations"])
    assert dict(report.counts) == {
        ("not a class", "placeholder category without annotations"): 1,
        ("fixed", "'area' is the box's, not the mask's (Roboflow): the mask's"): n,
        ("fixed", "box corner rounded to whole pixels (Roboflow): the polygon's bounds"): n,
    }
    assert re.search(r"category id 0 'shapes' \(the supercategory of 2 categories", report.table())
    by_id = {a["id"]: a for a in dataset["annotations"]}
    coco = load_coco_api(metadata.json_file, report=BadDataReport("skip"), fix_boxes=False)
    for r in records:
        for a in r["annotations"]:
            poly = np.array(by_id[a["id"]]["segmentation"][0]).reshape(-1, 2)
            bounds = [*poly.min(0), *np.ptp(poly, 0)]
            assert a["bbox"] == pytest.approx(bounds, abs=1e-9)
            assert coco.anns[a["id"]]["bbox"] == pytest.approx(bounds, abs=1e-9)
            rle = mask_util.frPyObjects([poly.ravel().tolist()], H, W)
            assert coco.anns[a["id"]]["area"] == float(mask_util.area(mask_util.merge(rle)))


def test_cvat_rectangles_dropped_and_crowd_masks_warned(tmp_path, caplog):
    dataset = tool_exports.cvat()
    json_file, image_root = write_export(tmp_path, dataset)
    with caplog.at_level(logging.WARNING, logger="condinst_percep.data"):
        records, report = _load(json_file, image_root)
    rectangle, brush = dataset["annotations"][-2:]
    assert report.counts[("fixed", "segmentation [] (a box without a mask, as CVAT and Label "
                          "Studio export rectangles): annotation dropped")] == 1
    assert f"annotation id {rectangle['id']}" in report.table()
    kept = {a["id"]: a for r in records for a in r["annotations"]}
    assert rectangle["id"] not in kept and kept[brush["id"]]["iscrowd"] == 1
    assert re.search(rf"1 of {len(dataset['annotations']) - 1} annotations are 'iscrowd': 1 "
                     rf"\(e.g. annotation id {brush['id']}\) and carry CVAT's 'attributes'", caplog.text)
    # The polygons' areas and boxes are COCO's already: nothing else changed.
    assert report.num("fixed") == 1


def test_label_studio_category_0_is_a_class_and_windows_paths_read(tmp_path):
    records, report, metadata = _load_export(tmp_path, tool_exports.label_studio(windows_paths=True))
    assert metadata.thing_classes == ["a", "b"] and metadata.placeholder_categories == []
    assert metadata.thing_dataset_id_to_contiguous_id == {0: 0, 1: 1}
    assert all(os.path.isfile(r["file_name"]) and "\\" not in r["file_name"] for r in records)
    assert dict(report.counts) == {
        ("fixed", "file_name with Windows separators '\\': read with '/'"): len(records)
    }


def test_labelme2coco_background_left_out_pixel_boxes_kept(tmp_path):
    dataset = tool_exports.labelme2coco()
    records, report, metadata = _load_export(tmp_path, dataset)
    assert metadata.thing_classes == ["a", "b"]
    assert [c["name"] for c in metadata.placeholder_categories] == ["_background_"]
    assert "a background entry (labelme2coco's labels file)" in report.table()
    written = {a["id"]: a["bbox"] for a in dataset["annotations"]}
    assert {a["id"]: a["bbox"] for r in records for a in r["annotations"]} == written
    assert report.num("fixed") == 0


def test_pycocotools_rle_objects_need_no_repair(tmp_path):
    dataset = tool_exports.pycocotools_written()
    json_file, image_root = write_export(tmp_path, dataset)
    records, report = _load(json_file, image_root)
    assert not report.counts
    assert all(isinstance(a["segmentation"]["counts"], str) for r in records for a in r["annotations"])


def test_placeholder_shaped_category_with_annotations_stays_a_class(tmp_path):
    dataset = tool_exports.roboflow()
    dataset["annotations"][0]["category_id"] = 0
    json_file, image_root = write_export(tmp_path, dataset)
    _load(json_file, image_root)
    assert MetadataCatalog.get(_name(json_file, image_root)).thing_classes == ["shapes", "a", "b"]


@pytest.mark.parametrize("policy", ("error", "skip"))
def test_two_classes_of_one_name_are_refused(tmp_path, policy):
    dataset = tool_exports.cvat()
    dataset["categories"][1]["name"] = "a"
    json_file, image_root = write_export(tmp_path, dataset)
    with pytest.raises(BadDataError, match=re.escape(json_file) + ": category ids 1 and 2 are both named 'a'"):
        _load(json_file, image_root, policy)


@pytest.mark.parametrize("area", [None, -5.0, "12"])
def test_area_that_is_not_a_number_is_computed(tmp_path, area):
    dataset = tool_exports.pycocotools_written()
    dataset["annotations"][0]["area"] = area
    json_file, _ = write_export(tmp_path, dataset)
    report = BadDataReport("error")
    coco = load_coco_api(json_file, report=report)
    assert report.counts == {("fixed", "'area' not a number >= 0: computed from the mask (or box)"): 1}
    expected = mask_util.area(dataset["annotations"][0]["segmentation"])
    assert coco.anns[1]["area"] == float(expected)


def test_more_objects_than_max_dets_warned_and_scored_with_a_higher_limit(tmp_path, caplog):
    """An image with 105 objects of one class: COCO's 100 detections (per image and category)
    miss 5 of them even when perfect."""
    dataset = tool_exports.pycocotools_written()
    dataset["images"] = dataset["images"][:1]
    dataset["annotations"] = []
    for k in range(105):
        mask = np.zeros((H, W), np.uint8)
        y, x = divmod(k, 15)
        mask[3 * y: 3 * y + 2, 3 * x: 3 * x + 2] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        dataset["annotations"].append({
            "id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
            "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            "area": 4.0, "bbox": [3.0 * x, 3.0 * y, 2.0, 2.0]})
    json_file, image_root = write_export(tmp_path, dataset)
    name = _name(json_file, image_root)
    records = DatasetCatalog.get(name)
    results = {}
    for max_dets in (100, 105):
        with caplog.at_level(logging.WARNING, logger="condinst_percep.evaluation"):
            evaluator = COCOEvaluator(name, distributed=False, max_dets_per_image=max_dets)
        evaluator.process([{"image_id": 1}], [{"instances": _instances(records[0])}])
        results[max_dets] = evaluator.evaluate()
    assert "1 images of" in caplog.text
    assert "more than 100 objects of one category (most: 105 of category id 1 in image id 1)" in caplog.text
    assert caplog.text.count("more than 105") == 0
    for task in ("bbox", "segm"):
        assert results[100][task]["AP-a"] < 100.0
        assert results[105][task]["AP"] == 100.0 and results[105][task]["APs"] == 100.0


def test_json_written_by_tools_is_read_with_extra_fields(tmp_path):
    """'info', 'licenses', 'type', per-image 'license'/'url'/'date_captured' and per-annotation
    'ignore'/'attributes' are carried along untouched and do not change the scores."""
    dataset = tool_exports.labelme2coco()
    json_file, image_root = write_export(tmp_path, dataset)
    coco = load_coco_api(json_file, report=BadDataReport("error"))
    assert coco.dataset["type"] == "instances" and coco.imgs[0]["url"] is None
    with open(json_file) as f:
        assert json.load(f) == dataset  # the reader never writes to the file
