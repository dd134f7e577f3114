"""Per-image latency of one model: eager Predictor, ExportedPredictor over ONNX Runtime (CPU)
and over the torch.export ExportedProgram (both graphs hold the whole inference); same images,
interleaved repeats, detections compared with the tests' bars (same count and classes, scores
within 1e-5, boxes within 1e-3 px, at most 1e-4 of the mask pixels different).

    python benchmarks/bench_export.py --config-file configs/Quickstart/CondInst_shapes.yaml \\
        --images 8 [--threads 1] [--repeat 3] MODEL.WEIGHTS model_final.pth

Images: the first ``--images`` of ``--dataset`` (default the config's DATASETS.TEST[0]; the raw files, resized by the
predictors). Export time is printed too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import numpy as np
import onnxruntime
import torch

from condinst_percep import ExportedPredictor, Predictor
from condinst_percep.config import get_cfg
from condinst_percep.data import DatasetCatalog, read_image

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--dataset", default="", help="image source (default: DATASETS.TEST[0])")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    spec = importlib.util.spec_from_file_location("export_model", os.path.join(HERE, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    records = DatasetCatalog.get(args.dataset or cfg.DATASETS.TEST[0])[: args.images]
    images = [read_image(r["file_name"], cfg.INPUT.FORMAT) for r in records]
    folder = tempfile.mkdtemp()
    predictors = {"eager": Predictor(cfg)}
    opts = list(args.opts)
    if not cfg.MODEL.WEIGHTS:  # the exported files get the eager model's random init
        weights = os.path.join(folder, "random_init.pth")
        torch.save({"model": predictors["eager"].model.state_dict()}, weights)
        opts += ["MODEL.WEIGHTS", weights]
    for fmt, name in (("onnx", "ONNX Runtime"), ("export", "ExportedProgram")):
        start = time.perf_counter()
        path = tool.main(["--config-file", args.config_file, "--format", fmt, "--output", folder,
                          "--sample-image", records[0]["file_name"], *opts])
        print(f"export {fmt}: {time.perf_counter() - start:.1f} s, {os.path.getsize(path) / 2**20:.1f} MiB")
        predictors[name] = ExportedPredictor(path)
        if fmt == "onnx":
            options = predictors[name].session.get_session_options()
            options.intra_op_num_threads = args.threads
            predictors[name].session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"])
    times = {k: [] for k in predictors}
    equal = {k: True for k in predictors}
    detections = []
    for r in range(args.repeat + 1):
        for image in images:
            outs = {}
            for name, predictor in predictors.items():
                start = time.perf_counter()
                outs[name] = predictor(image)
                if r:
                    times[name].append(time.perf_counter() - start)
            detections.append(len(outs["eager"]))
            for name, out in outs.items():
                equal[name] &= same_detections(out, outs["eager"])
    eager = np.median(times["eager"])
    print(f"{len(images)} images {images[0].shape[:2]}..., {args.threads} thread(s), median of "
          f"{args.repeat} rounds, {np.mean(detections):.1f} detections / image")
    print("| runtime | ms / image | / eager | same detections |")
    print("|---|---|---|---|")
    for name in predictors:
        t = np.median(times[name])
        print(f"| {name} | {t * 1000:.1f} | {t / eager:.2f} | {equal[name]} |")


def same_detections(got, expected) -> bool:
    if len(got) != len(expected) or not torch.equal(got.pred_classes, expected.pred_classes):
        return False
    if not len(got):
        return True
    return bool(
        (got.scores - expected.scores).abs().max() <= 1e-5
        and (got.pred_boxes - expected.pred_boxes).abs().max() <= 1e-3
        and (got.pred_masks != expected.pred_masks).float().mean() <= 1e-4
    )


if __name__ == "__main__":
    main()
