#!/usr/bin/env python
"""Runs a trained CondInst on images, a video file or a webcam and draws the instances (masks,
boxes, "class score%"), with AdelaiDet/detectron2's ``demo/demo.py`` flags:

    python demo/demo.py --config-file configs/Quickstart/CondInst_shapes.yaml \\
        --input photos/*.jpg --output vis/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file CFG.yaml --video-input clip.mp4 --output clip_vis.mp4 \\
        --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --config-file CFG.yaml --webcam --opts MODEL.WEIGHTS model.pth

``--output``: a folder for the PNGs (or a file name for a single image); an .mp4 file (or a
folder) for a video. Without ``--output`` the results are shown in a window (images, video,
webcam; Esc stops).
"""

from __future__ import annotations

import argparse
import logging
import glob
import os
import sys
import time

import cv2
import numpy as np
import tqdm

from condinst_percep import Predictor
from condinst_percep.config import load_cfg
from condinst_percep.data import MetadataCatalog, read_image
from condinst_percep.utils.logger import setup_logger
from condinst_percep.utils.visualizer import draw_instances

WINDOW = "CondInst"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--webcam", action="store_true", help="take inputs from webcam 0")
    source.add_argument("--video-input", help="path to a video file")
    source.add_argument("--input", nargs="+", help="image files or glob patterns, e.g. 'dir/*.jpg'")
    parser.add_argument("--output", help="folder or file to save the drawn images / video to")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score for instances to be shown (default 0.5)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, last on the line")
    return parser


def setup_cfg(args: argparse.Namespace):
    cfg = load_cfg(args.config_file, args.opts, need_weights=True)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold {args.confidence_threshold} is not in [0, 1]")
    return cfg


class Demo:
    """Predictor + drawing: ``frame`` (H, W, 3) uint8 BGR -> (instances kept, drawn BGR)."""

    def __init__(self, cfg, confidence_threshold: float):
        self.predictor = Predictor(cfg)
        self.threshold = confidence_threshold
        self.rgb = cfg.INPUT.FORMAT == "RGB"
        names_from = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
        self.class_names = MetadataCatalog.get(names_from).get("thing_classes") if names_from else None

    def __call__(self, frame_bgr: np.ndarray):
        image = frame_bgr[:, :, ::-1] if self.rgb else frame_bgr
        instances = self.predictor(np.ascontiguousarray(image)).to("cpu")
        instances = instances[instances.scores >= self.threshold]
        drawn = draw_instances(
            frame_bgr, masks=instances.pred_masks, boxes=instances.pred_boxes,
            classes=instances.pred_classes, scores=instances.scores, class_names=self.class_names,
        )
        return instances, drawn


def _image_files(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        files.extend(matches)
    return files


def _show(drawn: np.ndarray) -> bool:
    """Shows a frame; False when the user pressed Esc."""
    cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    cv2.imshow(WINDOW, drawn)
    return cv2.waitKey(1) != 27


def run_images(demo: Demo, files: list[str], output: str | None, logger) -> list[int]:
    counts = []
    for path in tqdm.tqdm(files, disable=not output, unit="image"):
        start = time.perf_counter()
        image = read_image(path, "BGR")
        instances, drawn = demo(image)
        counts.append(len(instances))
        logger.info(f"{path}: detected {len(instances)} instances in {time.perf_counter() - start:.2f}s")
        if output:
            if os.path.isdir(output) or len(files) > 1:
                os.makedirs(output, exist_ok=True)
                stem = os.path.splitext(os.path.basename(path))[0]
                out_file = os.path.join(output, f"{stem}.png")
            else:
                out_file = output
            if not cv2.imwrite(out_file, drawn):
                raise OSError(f"cv2 could not write {out_file}")
        elif not _show(drawn):
            break
    return counts


def open_video(source, what: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise OSError(f"{what} cannot be opened by OpenCV")
    return capture


def run_video(demo: Demo, capture: cv2.VideoCapture, name: str, output: str | None) -> list[int]:
    """Per-frame instance counts; writes an MP4 when ``output`` is given."""
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    if output:
        out_file = (os.path.join(output, os.path.splitext(os.path.basename(name))[0] + ".mp4")
                    if os.path.isdir(output) else output)
    counts = []
    try:
        with tqdm.tqdm(total=frames, unit="frame", desc=os.path.basename(str(name))) as bar:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                instances, drawn = demo(frame)
                counts.append(len(instances))
                bar.update(1)
                if output:
                    if writer is None:
                        h, w = drawn.shape[:2]
                        writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        if not writer.isOpened():
                            raise OSError(f"cv2 cannot write the video {out_file}")
                    writer.write(drawn)
                elif not _show(drawn):
                    break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return counts


def main(argv: list[str] | None = None) -> list[int]:
    """Returns the number of instances shown per image or frame."""
    args = get_parser().parse_args(argv)
    # The logging set-up is the command line's (__main__), so that calling main() from
    # Python leaves the caller's handlers alone.
    logger = logging.getLogger("condinst_percep")
    cfg = setup_cfg(args)
    demo = Demo(cfg, args.confidence_threshold)
    if args.input:
        return run_images(demo, _image_files(args.input), args.output, logger)
    if args.webcam:
        if args.output:
            raise ValueError("--webcam shows its frames in a window; --output is for files")
        return run_video(demo, open_video(0, "--webcam: camera 0 (none attached?)"), "webcam", None)
    capture = open_video(args.video_input, f"--video-input {args.video_input!r}")
    return run_video(demo, capture, args.video_input, args.output)


if __name__ == "__main__":
    setup_logger(name="condinst_percep")
    main()
    sys.exit(0)
