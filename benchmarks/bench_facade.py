"""Real facade photographs through the facade configs: training step time and peak memory at the
configs' 448 px, at the full 1024 px, and on the most crowded training image (115 windows, 122
objects: more than COCO's 100 detections, and more positive locations than MAX_PROPOSALS 500);
inference with 100 against more detections kept per image.

Every timing round-robin over the cases (one repeat of each in turn, so the machine's load hits
all alike); medians of wall and of process CPU time (one torch thread: CPU time is the step's
own work, wall time adds the waiting on a shared machine). Peak: CPU peak RSS of one step above
the RSS before it (bench_perceptual.peak_bytes). Batches are mapped once, outside the timing.

    python benchmarks/bench_facade.py --repeats 3
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np
import torch
from tabulate import tabulate

from bench_perceptual import machine_description, peak_bytes
from condinst_percep.config import get_cfg
from condinst_percep.data import DatasetCatalog, DatasetMapper
from condinst_percep.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "Facade", "CondInst_facade.yaml")
PERCEP = os.path.join(REPO, "configs", "Facade", "CondInst-Percep_facade.yaml")


def facade_name(root: str, split: str) -> str:
    folder = os.path.join(root, split)
    return f"coco:{os.path.join(folder, '_annotations.coco.json')}:{folder}"


# name: (config, short side, overrides, which images)
TRAIN_CASES = {
    "448 px (config)": (BASE, 448, [], "first"),
    "448 px +percep": (PERCEP, 448, [], "first"),
    "1024 px": (BASE, 1024, [], "first"),
    "1024 px +percep": (PERCEP, 1024, [], "first"),
    "crowded 448, MAX_PROPOSALS 500": (BASE, 448, [], "crowded"),
    "crowded 448, MAX_PROPOSALS -1": (BASE, 448, ["MODEL.CONDINST.MAX_PROPOSALS", "-1"], "crowded"),
    "crowded 448 +percep": (PERCEP, 448, [], "crowded"),
}
INFER_CASES = {
    "1024 px, 100 detections": ["MODEL.FCOS.POST_NMS_TOPK_TEST", "100"],
    "1024 px, 300 detections": ["MODEL.FCOS.POST_NMS_TOPK_TEST", "300"],
}


def build_cfg(config: str, size: int, overrides: list[str]):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list([
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        # An untrained model's scores sit below the 0.05 threshold: keep the top-k anyway.
        "MODEL.FCOS.INFERENCE_TH_TEST", "0.0", *overrides,
    ])
    return cfg


def pick(records: list[dict], which: str, n: int) -> list[dict]:
    if which == "crowded":
        return [max(records, key=lambda r: len(r["annotations"]))] * n
    return records[:n]


class TrainCase:
    def __init__(self, name, config, size, overrides, records, args):
        torch.manual_seed(0)
        cfg = build_cfg(config, size, overrides)
        self.name, self.model = name, build_model(cfg)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        mapper = DatasetMapper.build(cfg, is_train=True)
        self.batch = [mapper(r, rng=np.random.default_rng(k)) for k, r in enumerate(records)]
        self.instances = sum(len(x["instances"]) for x in self.batch)
        self.wall, self.cpu, self.peak = [], [], None

    def step(self) -> None:
        losses = self.model(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()


class InferCase:
    def __init__(self, name, overrides, record):
        cfg = build_cfg(BASE, 1024, overrides)
        torch.manual_seed(0)
        self.name, self.model = name, build_model(cfg).eval()
        self.batch = [DatasetMapper.build(cfg, is_train=False)(record)]
        self.wall, self.cpu, self.peak, self.detections = [], [], None, 0

    def step(self) -> None:
        with torch.no_grad():
            self.detections = len(self.model(self.batch)[0]["instances"])


def timed(case) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    case.step()
    case.wall.append(time.perf_counter() - wall)
    case.cpu.append(time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facade", default=os.path.join(REPO, "datasets", "facade"),
                        help="the export folder (train/, valid/, test/)")
    parser.add_argument("--images", type=int, default=2, help="images per training batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = DatasetCatalog.get(facade_name(args.facade, "train"))
    cases = [TrainCase(name, cfg, size, ov, pick(records, which, args.images), args)
             for name, (cfg, size, ov, which) in TRAIN_CASES.items()]
    crowded = pick(records, "crowded", 1)[0]
    cases += [InferCase(name, ov, crowded) for name, ov in INFER_CASES.items()]
    for case in cases:
        case.peak = peak_bytes(case.step, torch.device("cpu"))  # two steps: warm-up + measured
    for _ in range(args.repeats):
        for case in cases:
            timed(case)
    rows = []
    base = statistics.median(cases[0].cpu)
    for case in cases:
        what = (f"{case.instances} GT" if isinstance(case, TrainCase)
                else f"{case.detections} detections")
        rows.append([case.name, what, f"{statistics.median(case.wall):.2f}",
                     f"{statistics.median(case.cpu):.2f}",
                     f"{statistics.median(case.cpu) / base:.2f}" if isinstance(case, TrainCase) else "-",
                     f"{case.peak / 2**20:.0f}"])
    print(f"{datetime.date.today()}, {machine_description('cpu')}, load average "
          f"{os.getloadavg()[0]:.1f}; {args.images} images per training batch, {args.repeats} "
          f"repeats; `python {' '.join(sys.argv)}`")
    print(tabulate(rows, headers=["case", "objects", "wall s (median)", "CPU s (median)",
                                  "CPU vs 448 px", "peak MiB"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
