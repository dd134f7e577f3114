#!/usr/bin/env python
"""Runs a trained model on image files or on a registered dataset and writes PNGs with the
predicted masks, boxes, class names and scores.

    python tools/visualize.py --config-file configs/Quickstart/CondInst_shapes.yaml \\
        --dataset shapes_val --num 8 --output output/quickstart/condinst_shapes/vis \\
        --opts MODEL.WEIGHTS output/quickstart/condinst_shapes/model_final.pth
    python tools/visualize.py --config-file CFG.yaml --input photos/*.jpg --output vis/ \\
        --opts MODEL.WEIGHTS model.pth
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import cv2
import torch

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import load_cfg
from condinst_percep.data import DatasetCatalog, DatasetMapper, MetadataCatalog, read_image
from condinst_percep.data.classes import check_num_classes
from condinst_percep.engine import validate_cfg
from condinst_percep.modeling import build_model
from condinst_percep.utils.logger import setup_logger
from condinst_percep.utils.visualizer import draw_instances


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files or glob patterns")
    source.add_argument("--dataset", help="a registered dataset name, e.g. shapes_val")
    parser.add_argument("--num", type=int, default=16, help="images to draw from --dataset (default 16)")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs, last on the line, e.g. --opts MODEL.WEIGHTS m.pth",
    )
    return parser.parse_args(argv)


def _records(args: argparse.Namespace) -> list[dict]:
    if args.dataset:
        return DatasetCatalog.get(args.dataset)[: args.num]
    files: list[str] = []
    for pattern in args.input:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        files.extend(matches)
    return [{"file_name": f} for f in files]


def main(argv: list[str] | None = None) -> list[str]:
    """Writes one PNG per image; returns their paths."""
    args = parse_args(argv)
    logger = setup_logger(name="condinst_percep")
    cfg = load_cfg(args.config_file, args.opts, need_weights=True)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold {args.confidence_threshold} is not in [0, 1]")

    validate_cfg(cfg)
    model = build_model(cfg, checked=True)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    if args.dataset:
        # A model with other classes would draw wrong names on every mask.
        check_num_classes(cfg.MODEL.FCOS.NUM_CLASSES, [args.dataset], cfg.DATALOADER.BAD_DATA_POLICY)
    names_from = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    class_names = MetadataCatalog.get(names_from).get("thing_classes") if names_from else None
    mapper = DatasetMapper.build(cfg, is_train=False)

    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in _records(args):
        inputs = mapper(record)
        with torch.no_grad():
            instances = model([inputs])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        image = read_image(record["file_name"], "BGR")
        drawn = draw_instances(
            image,
            masks=instances.pred_masks,
            boxes=instances.pred_boxes,
            classes=instances.pred_classes,
            scores=instances.scores,
            class_names=class_names,
        )
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(args.output, f"{stem}.png")
        if not cv2.imwrite(path, drawn):
            raise OSError(f"cv2 could not write {path}")
        logger.info(f"{record['file_name']}: {len(instances)} instances -> {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)
