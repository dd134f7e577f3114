"""Tiny train_net.py runs (tests/tools, tests/reliability): a generated shapes set, the tiny model
as overrides, train_net.main in this process, and a subprocess launcher with one intra-op thread
(bitwise-reproducible on CPU)."""

import contextlib
import os
import subprocess
import sys

import torch

from condinst_percep.data import generate_shapes
from condinst_percep.engine import default_argument_parser
from tests.conftest import REPO, TINY_MODEL

sys.path.insert(0, str(REPO))
import train_net  # noqa: E402

TRAIN_NET = os.path.join(REPO, "train_net.py")
CONFIG = os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@contextlib.contextmanager
def one_thread():
    """One intra-op thread in this process, as the subprocesses get through ``ENV``: results are
    then bitwise comparable across processes, and tiny models run faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_shapes(root) -> str:
    """A 4-image generated shapes set; returns its ``coco:JSON:IMAGES`` dataset name."""
    json_file = generate_shapes(str(root), num_images=4, min_size=48, max_size=64, seed=0, max_objects=2)
    return f"coco:{json_file}:{os.path.join(str(root), 'images')}"


def tiny_opts(dataset: str, output_dir, **extra) -> list[str]:
    """train_net.py overrides: TINY_MODEL on ``dataset`` with 48-64 px images, 10 iterations, a
    checkpoint after each."""
    opts = {
        **TINY_MODEL,
        "INPUT.MIN_SIZE_TRAIN": "(48,)",
        "INPUT.MAX_SIZE_TRAIN": 64,
        "INPUT.MIN_SIZE_TEST": 48,
        "INPUT.MAX_SIZE_TEST": 64,
        "DATASETS.TRAIN": f"('{dataset}',)",
        "DATASETS.TEST": "()",
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.STEPS": "(8,)",
        "SOLVER.MAX_ITER": 10,
        "SOLVER.CHECKPOINT_PERIOD": 1,
        "SEED": 3,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(extra)
    return [str(x) for kv in opts.items() for x in kv]


def run_main(argv: list[str], config=CONFIG):
    """train_net.main on ``--config-file config`` and ``argv``, in this process."""
    args = default_argument_parser().parse_args(["--config-file", str(config)] + argv)
    return train_net.main(args)


def train_cmd(opts: list[str], *flags: str) -> list[str]:
    return [sys.executable, TRAIN_NET, "--config-file", CONFIG, *flags, *opts]


def run_train_net(opts: list[str], *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(opts, *flags), capture_output=True, text=True, timeout=timeout, env=ENV
    )
