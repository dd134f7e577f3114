"""COCOEvaluator against pycocotools, empty predictions, inference loop, and a 2-process run."""

import contextlib
import io
import json
import logging
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from condinst_percep.config import get_cfg
from condinst_percep.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    generate_shapes,
    register_coco_instances,
)
from condinst_percep.evaluation import (
    COCOEvaluator,
    flatten_results_dict,
    inference_on_dataset,
    print_csv_format,
)
from condinst_percep.structures import Instances

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _make_dataset(folder, name, num_images=6):
    json_file = generate_shapes(folder, num_images=num_images, min_size=48, max_size=64, seed=2)
    register_coco_instances(name, {}, json_file, os.path.join(folder, "images"))
    return json_file


@pytest.fixture
def dataset(tmp_path, request):
    name = f"test_eval_{request.node.name}"
    json_file = _make_dataset(str(tmp_path / "data"), name)
    yield name, json_file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _gt_outputs(records, perturb=None):
    """The ground truth of each record as model outputs; ``perturb(rng, boxes, masks, scores)``
    may alter them."""
    rng = np.random.default_rng(0)
    outputs = []
    for r in records:
        h, w = r["height"], r["width"]
        anns = r["annotations"]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for k, a in enumerate(anns):
            segm = a["segmentation"]
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
            masks[k] = mask_util.decode(rle).astype(bool)
        scores = np.ones(len(anns), dtype=np.float32)
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        if perturb is not None:
            boxes, masks, scores, classes = perturb(rng, boxes, masks, scores, classes)
        instances = Instances(
            (h, w),
            pred_boxes=torch.from_numpy(boxes),
            scores=torch.from_numpy(scores),
            pred_classes=torch.from_numpy(classes),
            pred_masks=torch.from_numpy(masks),
        )
        outputs.append({"instances": instances})
    return outputs


def _perturb(rng, boxes, masks, scores, classes):
    boxes = boxes + rng.uniform(-4, 4, size=boxes.shape).astype(np.float32)
    masks = np.roll(masks, int(rng.integers(-3, 4)), axis=2)
    scores = rng.uniform(0.1, 1, size=scores.shape).astype(np.float32)
    classes = np.where(rng.random(len(classes)) < 0.2, (classes + 1) % 4, classes)
    keep = rng.random(len(classes)) < 0.8
    return boxes[keep], masks[keep], scores[keep], classes[keep]


def _direct_pycocotools(json_file, results_file, iou_type):
    """pycocotools on the saved results; for segm the box is dropped so area comes from the
    mask (detectron2's convention)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        with open(results_file) as f:
            results = json.load(f)
        if iou_type == "segm":
            for r in results:
                r.pop("bbox")
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [s * 100 if s >= 0 else float("nan") for s in ev.stats[:6]]


def _evaluate(name, outputs, tmp_path):
    records = DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
    evaluator.reset()
    for r, o in zip(records, outputs):
        evaluator.process([{"image_id": r["image_id"]}], [o])
    return evaluator.evaluate()


def _assert_close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-9)


def test_ground_truth_scores_100_and_matches_pycocotools(dataset, tmp_path):
    name, json_file = dataset
    results = _evaluate(name, _gt_outputs(DatasetCatalog.get(name)), tmp_path)
    assert list(results) == ["bbox", "segm"]
    results_file = str(tmp_path / "out" / "coco_instances_results.json")
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP50"] == pytest.approx(100.0)
        for cls in ("circle", "rectangle", "triangle", "ellipse"):
            assert results[task][f"AP-{cls}"] == pytest.approx(100.0)
        _assert_close([results[task][m] for m in METRICS], _direct_pycocotools(json_file, results_file, task))


def test_imperfect_predictions_match_pycocotools(dataset, tmp_path):
    name, json_file = dataset
    results = _evaluate(name, _gt_outputs(DatasetCatalog.get(name), _perturb), tmp_path)
    results_file = str(tmp_path / "out" / "coco_instances_results.json")
    with open(results_file) as f:
        saved = json.load(f)
    assert saved and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(saved[0])
    assert {r["category_id"] for r in saved} <= {1, 2, 3, 4}
    for task in ("bbox", "segm"):
        assert 0 < results[task]["AP"] < 100
        _assert_close([results[task][m] for m in METRICS], _direct_pycocotools(json_file, results_file, task))


def test_empty_predictions_give_zero_ap(dataset, tmp_path):
    name, _ = dataset
    empty = lambda rng, b, m, s, c: (b[:0], m[:0], s[:0], c[:0])  # noqa: E731
    for outputs in (_gt_outputs(DatasetCatalog.get(name), empty), []):
        results = _evaluate(name, outputs, tmp_path)
        for task in ("bbox", "segm"):
            assert results[task]["AP"] == 0.0 and results[task]["AP50"] == 0.0
            assert all(v == 0.0 or math.isnan(v) for v in results[task].values())
        with open(tmp_path / "out" / "coco_instances_results.json") as f:
            assert json.load(f) == []


def test_unknown_predicted_class_is_named(dataset):
    name, _ = dataset
    records = DatasetCatalog.get(name)
    wrong = lambda rng, b, m, s, c: (b, m, s, c + 10)  # noqa: E731
    evaluator = COCOEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="predicted class 1[0-3] .*4 classes"):
        evaluator.process([{"image_id": records[0]["image_id"]}], _gt_outputs(records[:1], wrong))


class _Oracle(nn.Module):
    """Returns the ground truth of each input image; records the mode it was called in."""

    def __init__(self, outputs_by_id):
        super().__init__()
        self.outputs_by_id = outputs_by_id
        self.calls = []

    def forward(self, batched_inputs):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return [self.outputs_by_id[x["image_id"]] for x in batched_inputs]


def test_inference_on_dataset_with_test_loader(dataset, tmp_path):
    name, _ = dataset
    records = DatasetCatalog.get(name)
    oracle = _Oracle({r["image_id"]: o for r, o in zip(records, _gt_outputs(records))})
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.DATALOADER.NUM_WORKERS = 32, 0
    loader = build_detection_test_loader(cfg, name)
    oracle.train()
    results = inference_on_dataset(oracle, loader, COCOEvaluator(name, distributed=False))
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert oracle.calls == [(False, False)] * len(records) and oracle.training


def test_flatten_and_csv(caplog):
    results = {"bbox": {"AP": 1.5, "AP-a": 2.0}, "segm": {"AP": 3.0}}
    assert flatten_results_dict(results) == {"bbox/AP": 1.5, "bbox/AP-a": 2.0, "segm/AP": 3.0}
    with caplog.at_level(logging.INFO):
        print_csv_format(results)
    assert "copypaste: 1.5000" in caplog.text and "copypaste: 3.0000" in caplog.text


def _distributed_worker(rank, init_file, folder, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    name = "test_eval_distributed"
    json_file = os.path.join(folder, "annotations.json")
    register_coco_instances(name, {}, json_file, os.path.join(folder, "images"))
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = (name,), 3, 0
    try:
        build_detection_train_loader(cfg)
        odd_batch_error = ""
    except ValueError as e:
        odd_batch_error = str(e)
    cfg.INPUT.MIN_SIZE_TEST = 32
    loader = build_detection_test_loader(cfg, name)
    records = {r["image_id"]: r for r in DatasetCatalog.get(name)}
    seen = []
    evaluator = COCOEvaluator(name, output_dir=os.path.join(folder, "out"))
    evaluator.reset()
    for inputs in loader:
        seen += [x["image_id"] for x in inputs]
        evaluator.process(inputs, _gt_outputs([records[x["image_id"]] for x in inputs]))
    results = evaluator.evaluate()
    queue.put((rank, odd_batch_error, seen, {k: dict(v) for k, v in results.items()}))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gather_and_sharding(tmp_path):
    folder = str(tmp_path / "data")
    generate_shapes(folder, num_images=5, min_size=48, max_size=64, seed=2)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), folder, queue), nprocs=2)
    got = dict((r[0], r[1:]) for r in (queue.get(timeout=60) for _ in range(2)))
    for rank in (0, 1):
        assert "IMS_PER_BATCH (3)" in got[rank][0] and "processes (2)" in got[rank][0]
    assert got[0][1] + got[1][1] == [1, 2, 3, 4, 5] and len(got[0][1]) == 3
    assert got[1][2] == {}
    assert got[0][2]["bbox"]["AP"] == pytest.approx(100.0)
    assert got[0][2]["segm"]["AP"] == pytest.approx(100.0)
    with open(os.path.join(folder, "out", "coco_instances_results.json")) as f:
        assert {r["image_id"] for r in json.load(f)} == {1, 2, 3, 4, 5}


def test_results_are_saved_before_scoring(dataset, tmp_path):
    name, _ = dataset
    records = DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
    evaluator.process([{"image_id": 999}], _gt_outputs(records[:1]))
    with pytest.raises(ValueError, match=r"image ids not in the dataset: \[999\]"):
        evaluator.evaluate()
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        saved = json.load(f)
    assert saved and {r["image_id"] for r in saved} == {999}
