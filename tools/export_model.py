#!/usr/bin/env python
"""Exports a trained CondInst, detectron2's ``tools/deploy/export_model.py`` flags where they
apply:

    python tools/export_model.py --config-file configs/Quickstart/CondInst_shapes.yaml \\
        --format onnx --output exported/ --sample-image photo.jpg \\
        MODEL.WEIGHTS output/quickstart/condinst_shapes/model_final.pth
    # -> exported/model.onnx; --format export -> exported/model.pt2 (torch.export)

The file holds the whole inference (backbone, FPN, FCOS head and decoding, NMS, the dynamic mask
head, the mask paste to the padded input; dynamic batch and image size) and the config;
``condinst_percep.ExportedPredictor(file)`` runs it with the resize before and the masks' resize
to each image's size after (see docs/deployment.md). After writing, the sample image is run through the
eager and the exported model and both detection counts are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from condinst_percep import ExportedPredictor, Predictor
from condinst_percep.config import load_cfg
from condinst_percep.data import read_image
from condinst_percep.export import export_onnx, sample_inputs, save_program
from condinst_percep.utils.logger import setup_logger

FILE_NAMES = {"onnx": "model.onnx", "export": "model.pt2"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=sorted(FILE_NAMES), default="onnx",
                        help="onnx: ONNX (torch.onnx dynamo exporter); export: torch.export .pt2")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--sample-image", default=None,
                        help="image to trace with (default: random pixels at MIN_SIZE_TEST)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def sample_image(cfg, path: str | None) -> np.ndarray:
    if path:
        return read_image(path, cfg.INPUT.FORMAT)
    side = cfg.INPUT.MIN_SIZE_TEST or 512
    return np.random.default_rng(0).integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8)


def main(argv: list[str] | None = None) -> str:
    """Writes the exported file; returns its path."""
    args = get_parser().parse_args(argv)
    # The logging set-up is the command line's (__main__), so that calling main() from
    # Python leaves the caller's handlers alone.
    logger = logging.getLogger("condinst_percep")
    cfg = load_cfg(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")
    predictor = Predictor(cfg)
    image = sample_image(cfg, args.sample_image)
    inputs = sample_inputs(predictor.model, [predictor.model_input(0, image)])
    path = os.path.join(args.output, FILE_NAMES[args.format])
    save = export_onnx if args.format == "onnx" else save_program
    save(predictor.model, inputs, path, predictor.cfg)
    eager, exported = predictor(image), ExportedPredictor(path)(image)
    logger.info(f"wrote {path}; sample image {image.shape[:2]}: {len(eager)} detections eager, "
                f"{len(exported)} exported")
    return path


if __name__ == "__main__":
    setup_logger(name="condinst_percep")
    main()
    sys.exit(0)
