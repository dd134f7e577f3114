"""Datasets at the edges of what the loaders take: an empty image list (inference works,
training refuses) and one batch of very different image sizes."""

import json
import logging
import math
import re

import pytest
import torch

from condinst_percep.data import build_detection_test_loader, build_detection_train_loader
from condinst_percep.data.transforms import ResizeShortestEdge
from condinst_percep.evaluation import COCOEvaluator, inference_on_dataset
from tests.reliability.conftest import EmptyPredictor, coco_name, valid_dataset, write_dataset


def test_empty_image_list_inference_works_training_refuses(tmp_path, data_cfg, caplog):
    json_file, image_root = write_dataset(tmp_path, valid_dataset(num_images=0))
    name = coco_name(json_file, image_root)
    loader = build_detection_test_loader(data_cfg, name)
    assert len(loader) == 0
    out_dir = tmp_path / "out"
    model = EmptyPredictor()
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
    name = coco_name(json_file, image_root)
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
