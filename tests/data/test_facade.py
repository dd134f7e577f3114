"""The real Roboflow export in shared/data/facade: what the loader makes of it, and its ground
truth fed back as predictions scoring exactly 100 box and mask AP on every split (scored at the
COCO-results level, without a model, to stay fast)."""

import logging

import pycocotools.mask as mask_util
import pytest

from condinst_percep.data import DatasetCatalog, MetadataCatalog
from condinst_percep.data.coco import load_coco_api
from condinst_percep.data.validation import BadDataReport
from condinst_percep.evaluation.coco_evaluation import (
    derive_coco_results,
    evaluate_predictions_on_coco,
    ids_from_one,
)

CLASSES = [
    "balcony-fence", "car", "facade", "fence", "non-building-infrastructure", "shop", "street",
    "traffic-infrastructure", "vegetation", "window",
]
# (images, instances, most instances of one class in one image) per split, from SOURCE.md and
# the json.
SPLITS = {"train": (407, 12625, 115), "valid": (108, 3849, 90), "test": (83, 2842, 75)}


def _facade(shared_dir, split):
    folder = shared_dir / "data" / "facade" / split
    json_file = str(folder / "_annotations.coco.json")
    return json_file, f"coco:{json_file}:{folder}"


def _gt_results(records: list[dict], contiguous_to_id: dict[int, int]) -> list[dict]:
    results = []
    for r in records:
        for a in r["annotations"]:
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], r["height"], r["width"]))
            results.append({
                "image_id": r["image_id"], "category_id": contiguous_to_id[a["category_id"]],
                "bbox": a["bbox"], "score": 1.0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            })
    return results


@pytest.mark.parametrize("split", list(SPLITS))
def test_facade_ground_truth_scores_100(shared_dir, split):
    json_file, name = _facade(shared_dir, split)
    records = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    num_images, num_instances, most = SPLITS[split]
    assert len(records) == num_images
    assert sum(len(r["annotations"]) for r in records) == num_instances
    # Category 0 'facade' (supercategory 'none') is Roboflow's project entry; 3 is the class.
    assert metadata.thing_classes == CLASSES
    assert [(c["id"], c["name"]) for c in metadata.placeholder_categories] == [(0, "facade")]
    assert sorted(metadata.thing_dataset_id_to_contiguous_id) == list(range(1, 11))
    gt = load_coco_api(json_file, report=BadDataReport("skip"), fix_boxes=False)
    assert ids_from_one(gt) == num_instances  # Roboflow's annotation ids start at 0
    inverse = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    results = _gt_results(records, inverse)
    for task in ("bbox", "segm"):
        coco_eval, _ = evaluate_predictions_on_coco(gt, results, task, max_dets_per_image=max(100, most))
        scores = derive_coco_results(coco_eval, CLASSES)
        assert all(v == 100.0 for v in scores.values()), (task, scores)


def test_facade_train_has_an_image_beyond_coco_100_detections(shared_dir, caplog):
    """115 windows in one training image: at COCO's 100 detections (per image and class) the
    perfect predictions score below 100 window AP, and the evaluator says why before scoring."""
    from condinst_percep.evaluation import COCOEvaluator

    json_file, name = _facade(shared_dir, "train")
    records = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    with caplog.at_level(logging.WARNING, logger="condinst_percep.evaluation"):
        COCOEvaluator(name, distributed=False)
    assert "more than 100 objects of one category (most: 115 of category id 10 in image id 405)" in caplog.text
    gt = load_coco_api(json_file, report=BadDataReport("skip"), fix_boxes=False)
    ids_from_one(gt)
    inverse = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    image = max(records, key=lambda r: len(r["annotations"]))
    coco_eval, _ = evaluate_predictions_on_coco(
        gt, _gt_results([image], inverse), "bbox", img_ids=[image["image_id"]]
    )
    scores = derive_coco_results(coco_eval, CLASSES)
    # 100 of its 115 windows found at best; the image's other classes are all found.
    assert scores["AP-window"] == pytest.approx(100 * 100 / 115, abs=1.5)
    others = {k: v for k, v in scores.items() if k.startswith("AP-") and k != "AP-window" and v == v}
    assert others and all(v == pytest.approx(100.0, abs=1e-9) for v in others.values()), others
