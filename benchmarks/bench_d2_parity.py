"""Ours against AdelaiDet in detectron2, side by side in one process of the peer environment.

Same config (AdelaiDet's own ``configs/CondInst/MS_R_50_1x.yaml``), same weights (AdelaiDet's
initialisation, shared through the state_dict), same batch (two images of different sizes from
the synthetic shapes set, mapped by detectron2's ``DatasetMapper``): the training step (forward
+ backward) and inference per image (eval mode, batch of one) of

- ``ours``: ``CondInstPercep`` (condinst_percep.d2), against ``adelaidet``: AdelaiDet's
  ``CondInst``;
- with ``--percep``, also our ``PercepMaskHead`` on our CondInst (``ours+percep``) against our
  head on AdelaiDet's CondInst (``adelaidet+percep``, ``CondInstPercepAdelaiDet``).

Every timing is round-robin over the cases (one repeat of each in turn, so other processes'
load hits all alike); medians, minima and ratios come from the same run, in wall time and in
this process's CPU time (with one torch thread, the CPU time is what other processes' load
disturbs least). Run it with the peer
environment's python (``bash tools/peer_env.sh --python``)::

    OMP_NUM_THREADS=1 $PEER_PY benchmarks/bench_d2_parity.py --repeats 7 --percep
"""
import argparse
import copy
import datetime
import os
import statistics
import tempfile
import time

import torch
from tabulate import tabulate

from bench_perceptual import machine_description

import adet
import condinst_percep.d2.adelaidet  # noqa: F401  registers CondInstPercepAdelaiDet
from adet.config import get_cfg
from condinst_percep.d2 import add_condinst_percep_config
from condinst_percep.data import generate_shapes
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model

PERCEP = ["MODEL.PERCEP.ENABLED", True, "MODEL.CONDINST.MASK_HEAD.NAME", "PercepMaskHead",
          "MODEL.PERCEP.TARGET", "gt", "MODEL.PERCEP.STRUCTURE", (1, 1, 1, 1, 1),
          "MODEL.PERCEP.WIDTHS", (8, 16, 32, 64, 64)]


def make_cfg(min_size: int, max_size: int, percep: bool):
    cfg = get_cfg()
    add_condinst_percep_config(cfg)
    configs = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs")
    cfg.merge_from_file(os.path.join(configs, "CondInst/MS_R_50_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.FCOS.NUM_CLASSES", 4,
        "INPUT.MASK_FORMAT", "bitmask", "INPUT.RANDOM_FLIP", "none", "INPUT.HFLIP_TRAIN", False,
        "INPUT.MIN_SIZE_TRAIN", (min_size,), "INPUT.MAX_SIZE_TRAIN", max_size,
        "INPUT.MIN_SIZE_TEST", min_size, "INPUT.MAX_SIZE_TEST", max_size,
        *(PERCEP if percep else []),
    ])
    return cfg


def make_batch(cfg, root: str) -> tuple[list[dict], list[dict]]:
    json_file = generate_shapes(root, num_images=2, min_size=300, max_size=420, seed=3, max_objects=6)
    records = load_coco_json(json_file, os.path.join(root, "images"), "bench_shapes")
    train = [DatasetMapper(cfg, is_train=True)(copy.deepcopy(r)) for r in records]
    test = [DatasetMapper(cfg, is_train=False)(copy.deepcopy(r)) for r in records]
    return train, test


def build(cfg, arch: str, state: dict | None):
    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = arch
    torch.manual_seed(0)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def step(model, batch) -> tuple[float, float]:
    """(wall, CPU) seconds of forward + backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    batch = copy.deepcopy(batch)
    start, cpu = time.perf_counter(), time.process_time()
    losses = model(batch)
    sum(losses.values()).backward()
    return time.perf_counter() - start, time.process_time() - cpu


def infer(model, batch) -> tuple[float, float]:
    """(wall, CPU) seconds per image, one image per call."""
    model.eval()
    batch = copy.deepcopy(batch)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for x in batch:  # AdelaiDet cannot batch images of different sizes at inference
            model([x])
    return (time.perf_counter() - start) / len(batch), (time.process_time() - cpu) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--percep", action="store_true", help="also time the perceptual head")
    args = parser.parse_args()

    pairs = [("CondInst", "CondInstPercep", False)]
    if args.percep:
        pairs.append(("CondInstPercepAdelaiDet", "CondInstPercep", True))
    cases = {}
    with tempfile.TemporaryDirectory() as root:
        for theirs_arch, ours_arch, percep in pairs:
            cfg = make_cfg(args.min_size, args.max_size, percep)
            train, test = make_batch(cfg, os.path.join(root, str(percep)))
            theirs = build(cfg, theirs_arch, None)
            ours = build(cfg, ours_arch, theirs.state_dict())
            suffix = "+percep" if percep else ""
            cases[f"adelaidet{suffix}"] = (theirs, train, test)
            cases[f"ours{suffix}"] = (ours, train, test)
    sizes = [tuple(x["image"].shape[-2:]) for x in train]

    times = {name: {"step": [], "infer": []} for name in cases}
    for name, (model, train, test) in cases.items():  # warm-up
        step(model, train)
        infer(model, test)
    for _ in range(args.repeats):
        for name, (model, train, test) in cases.items():
            times[name]["infer"].append(infer(model, test))
        for name, (model, train, test) in cases.items():
            times[name]["step"].append(step(model, train))

    rows = []
    for name in cases:
        ref = name.replace("ours", "adelaidet")
        row = [name]
        for kind in ("step", "infer"):
            for clock in (0, 1):  # wall, CPU
                ms = [t[clock] * 1000 for t in times[name][kind]]
                ref_med = statistics.median(t[clock] * 1000 for t in times[ref][kind])
                row += [f"{statistics.median(ms):.0f}", f"{min(ms):.0f}",
                        f"{statistics.median(ms) / ref_med:.3f}"]
        rows.append(row)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{machine_description('cpu')}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}, R-50 (AdelaiDet MS_R_50_1x.yaml), batch {sizes}, "
          f"{args.repeats} repeats")
    headers = ["model"]
    for kind in ("step", "inference/image"):
        for clock in ("wall", "CPU"):
            headers += [f"{kind} {clock} median ms", "min", "vs AdelaiDet"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
