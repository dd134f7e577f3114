"""Box-only COCO files (no ``segmentation``) for BoxInst: the mapper reads boxes alone, and
train_net trains BoxInst on them; CondInst still refuses them by annotation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from condinst_percep.data.coco import load_coco_json
from condinst_percep.data.dataset_mapper import DatasetMapper
from condinst_percep.data.transforms import RandomFlip, ResizeShortestEdge
from condinst_percep.data.validation import BadDataError

from tests.train_helpers import make_shapes, run_train_net, tiny_opts


def strip_segmentations(dataset: str) -> str:
    """The ``coco:JSON:IMAGES`` dataset rewritten without any ``segmentation``."""
    _, json_file, images = dataset.split(":")
    with open(json_file) as f:
        coco = json.load(f)
    for ann in coco["annotations"]:
        del ann["segmentation"]
    boxes_only = json_file.replace(".json", "_boxes.json")
    with open(boxes_only, "w") as f:
        json.dump(coco, f)
    return f"coco:{boxes_only}:{images}"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    full = make_shapes(tmp_path_factory.mktemp("shapes"))
    return full, strip_segmentations(full)


def records(dataset: str) -> list[dict]:
    _, json_file, images = dataset.split(":")
    return load_coco_json(json_file, images)


def test_mapper_reads_boxes_alone(datasets):
    full, boxes_only = datasets
    augs = [ResizeShortestEdge((40,), 80, "choice"), RandomFlip(0.5)]
    with_masks = DatasetMapper(True, augs)
    box_mapper = DatasetMapper(True, augs, use_masks=False)
    for a, b in zip(records(full), records(boxes_only)):
        assert all("segmentation" not in ann for ann in b["annotations"])
        ref = with_masks(a, np.random.default_rng(5))["instances"]
        out = box_mapper(b, np.random.default_rng(5))["instances"]
        assert not out.has("gt_masks")
        # Same augmentation draws: the same boxes and classes (empty-mask filtering aside,
        # which these shapes never trigger).
        assert out.gt_boxes.tolist() == ref.gt_boxes.tolist()
        assert out.gt_classes.tolist() == ref.gt_classes.tolist()


def test_instance_segmentation_refuses_a_box_only_file_by_annotation(datasets):
    _, boxes_only = datasets
    record = records(boxes_only)[0]
    first = record["annotations"][0]["id"]
    with pytest.raises(BadDataError, match=rf"Annotation {first} has no 'segmentation'"):
        DatasetMapper(True, [ResizeShortestEdge((40,), 80, "choice")])(record)


@pytest.mark.slow
def test_train_net_trains_boxinst_on_a_box_only_file(datasets, tmp_path):
    _, boxes_only = datasets
    opts = tiny_opts(
        boxes_only, tmp_path, **{"MODEL.BOXINST.ENABLED": True, "SOLVER.MAX_ITER": 4,
                                  "SOLVER.STEPS": "(3,)", "SOLVER.CHECKPOINT_PERIOD": 4,
                                  "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS": 2}
    )
    result = run_train_net(opts)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f]
    last = [m for m in metrics if "loss_prj" in m][-1]
    assert "loss_mask" not in last and last["loss_pairwise"] > 0
    assert os.path.exists(os.path.join(tmp_path, "model_final.pth"))
