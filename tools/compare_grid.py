#!/usr/bin/env python
"""Side-by-side pictures of the same dataset images: ground truth | model 1 | model 2 ..., the
masks drawn on the photograph at its full resolution, one PNG per image (a titled column per
panel).

    python tools/compare_grid.py --dataset \\
        coco:datasets/facade/test/_annotations.coco.json:datasets/facade/test --num 4 \\
        --model baseline configs/Facade/CondInst_facade.yaml output/facade/condinst/model_final.pth \\
        --model "+perceptual" configs/Facade/CondInst-Percep_facade.yaml \\
            output/facade/condinst_percep/model_final.pth \\
        --output output/facade/compare

``--colors 256`` writes palette PNGs (median-cut quantised, about a fifth of the size) for
pictures kept in a repository, as docs/images/facade_compare.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np
import torch
from PIL import Image

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.data import DatasetCatalog, DatasetMapper, MetadataCatalog, read_image
from condinst_percep.data.classes import check_num_classes
from condinst_percep.data.detection_utils import segmentation_to_bitmask
from condinst_percep.modeling import build_model
from condinst_percep.utils.visualizer import draw_instances

TITLE_HEIGHT = 56


def ground_truth_panel(image: np.ndarray, record: dict, class_names: list[str]) -> np.ndarray:
    """The record's non-crowd annotations (masks at the record's size, XYWH boxes)."""
    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    h, w = image.shape[:2]
    masks = np.stack([segmentation_to_bitmask(a["segmentation"], h, w, a.get("id")) for a in anns]) \
        if anns else np.zeros((0, h, w), bool)
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)]).reshape(-1, 4)
    return draw_instances(image, masks=masks, boxes=boxes, classes=[a["category_id"] for a in anns],
                          class_names=class_names)


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` below a white strip holding ``title``, scaled to the panel's width."""
    strip = np.full((TITLE_HEIGHT, panel.shape[1], 3), 255, np.uint8)
    scale = max(0.6, panel.shape[1] / 700)
    cv2.putText(strip, title, (12, TITLE_HEIGHT - 16), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                max(1, int(2 * scale)), cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


class Predictor:
    """A trained model from (config, weights) and its test-time mapper."""

    def __init__(self, config_file: str, weights: str, opts: list[str]) -> None:
        cfg = get_cfg()
        cfg.merge_from_file(config_file)
        cfg.merge_from_list([*opts, "MODEL.WEIGHTS", weights])
        cfg.freeze()
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        Checkpointer(self.model).load(weights)
        self.mapper = DatasetMapper.build(cfg, is_train=False)

    def __call__(self, record: dict, threshold: float):
        with torch.no_grad():
            instances = self.model([self.mapper(record)])[0]["instances"].to("cpu")
        return instances[instances.scores >= threshold]


def save_png(path: str, grid: np.ndarray, colors: int) -> None:
    """Writes ``grid`` (H, W, 3) uint8 BGR as a PNG: full colour, or with ``colors`` > 0 a
    median-cut palette of that many colours (undithered: flat mask fills stay flat)."""
    image = Image.fromarray(np.ascontiguousarray(grid[..., ::-1]))
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                               dither=Image.Dither.NONE)
    image.save(path, optimize=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a dataset name, e.g. coco:JSON:IMAGES")
    parser.add_argument("--num", type=int, default=4, help="the first NUM images (default 4)")
    parser.add_argument("--model", nargs=3, action="append", default=[],
                        metavar=("LABEL", "CONFIG", "WEIGHTS"), help="a model to draw (repeat)")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--colors", type=int, default=0,
                        help="quantise to a palette of this many colours (2-256); 0: full colour")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides for every model, KEY VALUE pairs, last on the line")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("give at least one --model LABEL CONFIG WEIGHTS")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold {args.confidence_threshold} is not in [0, 1]")
    if args.colors and not 2 <= args.colors <= 256:
        parser.error(f"--colors {args.colors} is not 0 or in [2, 256] (a PNG palette's range)")
    return args


def main(argv: list[str] | None = None) -> list[str]:
    """Writes one PNG per image; returns their paths."""
    args = parse_args(argv)
    records = DatasetCatalog.get(args.dataset)[: args.num]
    class_names = MetadataCatalog.get(args.dataset).get("thing_classes")
    predictors = []
    for label, config_file, weights in args.model:
        predictor = Predictor(config_file, weights, args.opts)
        # A model with other classes would draw wrong names on every mask.
        check_num_classes(predictor.cfg.MODEL.FCOS.NUM_CLASSES, [args.dataset])
        predictors.append((label, predictor))
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in records:
        image = read_image(record["file_name"], "BGR")
        panels = [titled(ground_truth_panel(image, record, class_names), "ground truth")]
        for label, predictor in predictors:
            inst = predictor(record, args.confidence_threshold)
            drawn = draw_instances(image, masks=inst.pred_masks, boxes=inst.pred_boxes,
                                   classes=inst.pred_classes, scores=inst.scores,
                                   class_names=class_names)
            panels.append(titled(drawn, f"{label}: {len(inst)} detections, score >= {args.confidence_threshold}"))
        path = os.path.join(args.output, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png")
        save_png(path, np.concatenate(panels, axis=1), args.colors)
        print(f"{record['file_name']} -> {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)
