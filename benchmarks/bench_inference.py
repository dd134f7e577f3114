"""Per-image CondInst inference, ours against AdelaiDet's (the real one, in the peer
environment), same weights, same image, one process, interleaved repeats:

    PYTHONPATH=$PWD $PEER_PY benchmarks/bench_inference.py [--threads 1] [--repeat 5]
        [--quickstart-weights output/quickstart/condinst_shapes/model_final.pth]

- R-50 (each library's ``configs/CondInst/MS_R_50_1x.yaml``, random init shared by loading
  AdelaiDet's state_dict into ours), ``MODEL.FCOS.INFERENCE_TH_TEST 0`` and
  ``PRE_NMS_TOPK_TEST = count / 5``, so that exactly ``count`` candidates (5 levels) reach NMS.
- With ``--quickstart-weights``: the trained quickstart model (R-18, 16-128 wide) at its default
  threshold on shapes_val images. detectron2 cannot build that R-18 (it requires
  RES2_OUT_CHANNELS 64), so AdelaiDet's CondInst gets our backbone module (ResNet + FPN, the same
  code on both sides) and AdelaiDet's own FCOS, controller, mask branch and mask head.

"same" compares boxes, scores, classes and masks exactly.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def adelaidet_model(config_file: str, opts: list):
    import adet
    from adet.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    if not os.path.isabs(config_file):
        config_file = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs", config_file)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return build_model(cfg).eval()


def our_model(config_file: str, opts: list):
    from condinst_percep.config import get_cfg
    from condinst_percep.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(HERE, "configs", config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return build_model(cfg).eval()


def same_detections(theirs, ours) -> bool:
    return (
        len(theirs) == len(ours)
        and torch.equal(theirs.pred_boxes.tensor, ours.pred_boxes)
        and torch.equal(theirs.scores, ours.scores)
        and torch.equal(theirs.pred_classes, ours.pred_classes)
        and torch.equal(theirs.pred_masks.bool(), ours.pred_masks)
    )


def compare(theirs, ours, images: list[np.ndarray], repeat: int) -> tuple[float, float, bool, int]:
    """Median seconds per image (AdelaiDet, ours), detections identical, mean detections."""
    inputs = [
        {"image": torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))),
         "height": im.shape[0], "width": im.shape[1]}
        for im in images
    ]
    times = {"theirs": [], "ours": []}
    same, count = True, 0
    with torch.no_grad():
        for r in range(repeat + 1):
            for x in inputs:
                outs = {}
                for name, model in (("theirs", theirs), ("ours", ours)):
                    t = time.perf_counter()
                    outs[name] = model([x])[0]["instances"]
                    if r:  # the first round warms up
                        times[name].append(time.perf_counter() - t)
                same &= same_detections(outs["theirs"], outs["ours"])
                count += len(outs["ours"]) if r == 0 else 0
    return float(np.median(times["theirs"])), float(np.median(times["ours"])), same, count / len(inputs)


def shapes_images(n: int, seed: int = 0, size=(512, 768)) -> list[np.ndarray]:
    from condinst_percep.data.shapes import render_scene

    return [render_scene(np.random.default_rng([seed, i]), *size, 6)[0] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", type=int, default=2, help="shapes images per R-50 row")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--quickstart-weights", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | candidates to NMS | AdelaiDet (s/image) | ours (s/image) | ours / AdelaiDet "
          "| detections per image | same detections |")
    print("|---|---|---|---|---|---|---|")
    images = shapes_images(args.images)
    for count in args.counts:
        opts = ["MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "MODEL.FCOS.PRE_NMS_TOPK_TEST", count // 5]
        torch.manual_seed(0)
        theirs = adelaidet_model("CondInst/MS_R_50_1x.yaml", opts)
        ours = our_model("CondInst/MS_R_50_1x.yaml", opts)
        ours.load_state_dict(theirs.state_dict(), strict=False)
        t_theirs, t_ours, same, dets = compare(theirs, ours, images, args.repeat)
        print(f"| R-50, random init, 512x768 | {count} | {t_theirs:.3f} | {t_ours:.3f} | "
              f"{t_ours / t_theirs:.2f} | {dets:.0f} | {same} |")
    if args.quickstart_weights:
        from condinst_percep.checkpoint import Checkpointer
        from condinst_percep.config import get_cfg
        from condinst_percep.data import DatasetCatalog, read_image

        ours = our_model("Quickstart/CondInst_shapes.yaml", [])
        Checkpointer(ours).load(args.quickstart_weights)
        # AdelaiDet builds a stand-in backbone, then takes ours.
        theirs = adelaidet_model(
            os.path.join(HERE, "configs", "Quickstart", "CondInst_shapes.yaml"),
            ["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.STEM_OUT_CHANNELS", 64,
             "MODEL.RESNETS.RES2_OUT_CHANNELS", 256],
        )
        theirs.backbone = ours.backbone
        missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
        assert not unexpected and all(k.endswith("_iter") for k in missing), (missing, unexpected)
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(HERE, "configs", "Quickstart", "CondInst_shapes.yaml"))
        from condinst_percep.data import DatasetMapper

        mapper = DatasetMapper.build(cfg, is_train=False)
        records = DatasetCatalog.get("shapes_val")[:8]
        images = [mapper(r)["image"].numpy().transpose(1, 2, 0) for r in records]
        t_theirs, t_ours, same, dets = compare(theirs, ours, images, args.repeat)
        print(f"| quickstart (trained), shapes_val, {images[0].shape[0]}x{images[0].shape[1]} | "
              f"default (TH 0.05) | {t_theirs:.4f} | {t_ours:.4f} | {t_ours / t_theirs:.2f} | "
              f"{dets:.1f} | {same} |")


if __name__ == "__main__":
    main()
