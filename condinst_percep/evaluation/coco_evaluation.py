"""COCO box and mask AP through pycocotools, with detectron2's result format."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import Counter, OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from ..checkpoint import atomic_write
from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.coco import category_id_map, load_coco_api
from ..data.validation import BadDataReport
from ..structures import Instances
from ..utils import comm
from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
# COCO's limit on the detections scored per image.
COCO_MAX_DETS = 100


def instances_to_coco_json(
    instances: Instances, image_id: int, contiguous_to_dataset_id: dict[int, int]
) -> list[dict]:
    """Predictions of one image -> COCO result dicts (XYWH ``bbox``, ``score``, dataset
    ``category_id`` and, when ``pred_masks`` exist, compressed-RLE ``segmentation``).

    Masks are encoded one at a time, so no (K, H, W) uint8 copy is ever made.
    """
    num = len(instances) if instances.get_fields() else 0
    if num == 0:
        return []
    boxes = instances.pred_boxes.detach().float().cpu().numpy().astype(np.float64)
    boxes[:, 2:] -= boxes[:, :2]
    scores = instances.scores.detach().float().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    masks = instances.pred_masks if instances.has("pred_masks") else None
    if masks is not None and masks.dtype != torch.bool:
        raise ValueError(f"pred_masks must be bool (thresholded), got {masks.dtype}")
    results = []
    for k in range(num):
        if classes[k] not in contiguous_to_dataset_id:
            raise ValueError(
                f"Image {image_id}: predicted class {classes[k]} is not one of the dataset's "
                f"{len(contiguous_to_dataset_id)} classes (does MODEL.FCOS.NUM_CLASSES match?)"
            )
        result = {
            "image_id": image_id,
            "category_id": contiguous_to_dataset_id[classes[k]],
            "bbox": boxes[k].tolist(),
            "score": scores[k],
        }
        if masks is not None:
            mask = masks[k].detach().cpu().numpy().astype(np.uint8)
            rle = mask_util.encode(np.asfortranarray(mask))
            result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(result)
    return results


def ids_from_one(coco_gt: COCO) -> int:
    """Renumbers the ground truth's annotation ids 1..N in file order (in place) when one is
    <= 0; returns how many ids changed. COCOeval stores the matched annotation's id in its
    match table, where 0 means "no match": a detection matched to annotation id 0 (Roboflow,
    Label Studio and labelme2coco start their ids at 0) counts as a false positive, and the
    ground truth fed back as predictions scores 99.4 instead of 100 on the facade test set.
    Predictions never refer to annotation ids, so the scores are otherwise unchanged."""
    annotations = coco_gt.dataset["annotations"]
    if all(a["id"] > 0 for a in annotations):
        return 0
    changed = 0
    for new_id, ann in enumerate(annotations, start=1):
        changed += ann["id"] != new_id
        ann["id"] = new_id
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return changed


def _empty_results(coco_gt: COCO) -> COCO:
    # COCO.loadRes cannot take an empty list; an empty result set must still score AP 0.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_predictions_on_coco(
    coco_gt: COCO,
    coco_results: list[dict],
    iou_type: str,
    img_ids: list[int] | None = None,
    max_dets_per_image: int = COCO_MAX_DETS,
) -> tuple[COCOeval, str]:
    """Runs COCOeval with maxDets ``[1, 10, max_dets_per_image]`` (COCO's 100 by default, as
    detectron2's ``max_dets_per_image``); returns it and the text of its summary table."""
    results = copy.deepcopy(coco_results)
    if iou_type == "segm":
        if any("segmentation" not in r for r in results):
            raise ValueError("segm evaluation needs masks, but some predictions have no pred_masks")
        for r in results:
            # Without a box, loadRes derives area and box from the mask, as detectron2 does.
            r.pop("bbox", None)
    if any(ann_id <= 0 for ann_id in coco_gt.anns):
        raise ValueError(
            "The ground truth has an annotation id <= 0: COCOeval records 'no match' as 0, so a "
            "match to annotation id 0 counts as a miss; renumber the ids from 1 "
            "(COCOEvaluator does it with ids_from_one)"
        )
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"Predictions refer to image ids not in the dataset: {sorted(unknown)[:10]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.params.maxDets = [1, 10, max_dets_per_image]
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    text = summary.getvalue()
    if max_dets_per_image != COCO_MAX_DETS:
        # summarize() reads its first AP at a fixed 100 detections (-1 when maxDets lacks
        # 100); the others already use maxDets[2].
        precision = coco_eval.eval["precision"][:, :, :, 0, -1]
        defined = precision[precision > -1]
        coco_eval.stats[0] = float(np.mean(defined)) if defined.size else -1.0
        text += f"(first line: AP @[ IoU=0.50:0.95 | area= all | maxDets={max_dets_per_image} ] = {coco_eval.stats[0]:.3f})\n"
    return coco_eval, text


def derive_coco_results(coco_eval: COCOeval, class_names: list[str]) -> OrderedDict:
    """``{AP, AP50, AP75, APs, APm, APl, AP-<class>...}`` in percent; NaN where undefined
    (no ground truth of that size or class)."""
    results = OrderedDict(
        (m, float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan"))
        for i, m in enumerate(COCO_METRICS)
    )
    # precision: (iou thresholds, recall thresholds, classes, area ranges, max dets)
    precisions = coco_eval.eval["precision"]
    if precisions.shape[2] != len(class_names):
        raise ValueError(
            f"{precisions.shape[2]} evaluated categories but {len(class_names)} class names"
        )
    for idx, name in enumerate(class_names):
        precision = precisions[:, :, idx, 0, -1]
        precision = precision[precision > -1]
        results[f"AP-{name}"] = float(np.mean(precision) * 100) if precision.size else float("nan")
    return results


def per_category_table(results: dict, n_cols: int = 6) -> str:
    items = [(k[len("AP-") :], f"{v:.3f}") for k, v in results.items() if k.startswith("AP-")]
    n_cols = min(n_cols, 2 * len(items)) or 2
    flat = list(itertools.chain(*items))
    rows = itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])
    headers = ["category", "AP"] * (n_cols // 2)
    return tabulate(rows, tablefmt="pipe", floatfmt=".3f", headers=headers, numalign="left")


class COCOEvaluator(DatasetEvaluator):
    """Box and mask AP of a COCO-format dataset (its metadata must hold ``json_file``).

    ``process`` converts each image's ``instances`` (pred_boxes XYXY, scores, pred_classes,
    pred_masks at the original size) to COCO results; ``evaluate`` gathers them from every
    process, writes ``output_dir/coco_instances_results.json`` (before scoring, atomically) and
    returns ``OrderedDict(bbox={AP, AP50, ..., AP-<class>}, segm={...})`` in percent on the main
    process (an empty dict elsewhere). ``max_dets_per_image`` is COCOeval's limit of detections
    scored per image (detectron2's argument; COCO's 100 by default); ground truth with more
    objects in an image is warned about. Annotation ids <= 0 are renumbered (:func:`ids_from_one`).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        distributed: bool = True,
        tasks: tuple[str, ...] = ("bbox", "segm"),
        max_dets_per_image: int = COCO_MAX_DETS,
    ) -> None:
        unknown = set(tasks) - {"bbox", "segm"}
        if unknown or not tasks:
            raise ValueError(f"COCOEvaluator tasks must be among ('bbox', 'segm'), got {tasks}")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._tasks = tuple(t for t in ("bbox", "segm") if t in tasks)
        metadata = MetadataCatalog.get(dataset_name)
        json_file = metadata.get("json_file")
        if json_file is None:
            raise ValueError(
                f"COCOEvaluator needs the metadata 'json_file' of dataset '{dataset_name}'; "
                "register it with register_coco_instances"
            )
        if not os.path.isfile(json_file):
            # Generated sets (shapes) write their json on first load.
            DatasetCatalog.get(dataset_name)
        # The ground truth is checked like the loader's records: the images the "skip" policy
        # leaves out are not scored, and polygons pycocotools cannot rasterise are removed;
        # boxes stay as written, as in COCO's official evaluation.
        report = BadDataReport("skip")
        self._coco_api = load_coco_api(json_file, dataset_name, report, fix_boxes=False)
        if report.num("skipped") or report.num("fixed"):
            report.log(logger, f"COCOEvaluator ground truth of '{dataset_name}'")
        self._max_dets = max_dets_per_image
        self._warn_crowded_images()
        renumbered = ids_from_one(self._coco_api)
        if renumbered:
            logger.info(
                f"'{dataset_name}': annotation ids start at 0 or below; renumbered 1..N for "
                f"COCOeval ({renumbered} ids changed), which takes id 0 for 'no match'"
            )
        id_map = metadata.get("thing_dataset_id_to_contiguous_id") or category_id_map(self._coco_api)
        self._contiguous_to_dataset_id = {v: k for k, v in id_map.items()}
        self._class_names = metadata.get("thing_classes") or [
            c["name"] for c in self._coco_api.loadCats(sorted(id_map))
        ]
        self._predictions: list[dict] = []

    def _warn_crowded_images(self) -> None:
        # COCOeval keeps maxDets detections per image and category.
        counts = Counter(
            (a["image_id"], a["category_id"])
            for a in self._coco_api.dataset["annotations"]
            if not a.get("iscrowd", 0)
        )
        crowded = sorted((n, key) for key, n in counts.items() if n > self._max_dets)
        if crowded:
            most, (img_id, cat_id) = crowded[-1]
            logger.warning(
                f"{len(crowded)} images of '{self._dataset_name}' have more than "
                f"{self._max_dets} objects of one category (most: {most} of category id "
                f"{cat_id} in image id {img_id}): COCO's AP scores at most {self._max_dets} "
                "detections per image and category, so objects beyond them count as missed even "
                "for perfect predictions. MODEL.FCOS.POST_NMS_TOPK_TEST above 100 raises both "
                "the model's limit and the evaluation's"
            )

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                instances = out["instances"]
                self._predictions.append(
                    {
                        "image_id": inp["image_id"],
                        "instances": instances_to_coco_json(
                            instances, inp["image_id"], self._contiguous_to_dataset_id
                        ),
                    }
                )

    def evaluate(self, img_ids: list[int] | None = None) -> OrderedDict:
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.all_gather(self._predictions)))
            if not comm.is_main_process():
                return OrderedDict()
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning(f"COCOEvaluator on '{self._dataset_name}' received no predictions")
        gt_ids = set(self._coco_api.getImgIds() if img_ids is None else img_ids)
        if not gt_ids:
            logger.warning(f"Dataset '{self._dataset_name}' has no images: every AP is NaN")
        missed = gt_ids - {p["image_id"] for p in predictions}
        if missed and predictions:
            logger.warning(
                f"{len(missed)} of {len(gt_ids)} images of '{self._dataset_name}' got no output "
                f"(skipped as bad data?), e.g. image id {min(missed)}: their objects count as missed"
            )
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        if self._output_dir:
            path = os.path.join(self._output_dir, RESULTS_FILE)
            os.makedirs(self._output_dir, exist_ok=True)
            atomic_write(path, lambda f: json.dump(coco_results, f), mode="w")
            logger.info(f"Saved {len(coco_results)} results to {path}")
        results = OrderedDict()
        for task in self._tasks:
            coco_eval, summary = evaluate_predictions_on_coco(
                self._coco_api, coco_results, task, img_ids, self._max_dets
            )
            logger.info(f"Evaluation results for {task} on '{self._dataset_name}':\n{summary}")
            results[task] = derive_coco_results(coco_eval, self._class_names)
            table = tabulate(
                [[f"{results[task][m]:.3f}" for m in COCO_METRICS]],
                headers=list(COCO_METRICS), tablefmt="pipe", numalign="left",
            )
            per_category = per_category_table(results[task])
            logger.info(f"{task} AP:\n{table}\nPer-category {task} AP:\n{per_category}")
        return results
