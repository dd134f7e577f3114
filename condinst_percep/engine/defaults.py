"""Command line and per-process set-up shared by ``train_net.py`` and the tools."""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..utils import comm
from ..utils.logger import setup_logger

__all__ = [
    "default_argument_parser", "default_setup", "seed_all_rng", "iteration_seed", "collect_env_info"
]


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's command line: config file, resume / eval-only, processes, overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  one machine, 4 GPUs:  python train_net.py --config-file cfg.yaml --num-gpus 4\n"
            "  2 CPU processes (gloo) on a machine without CUDA:  ... --num-gpus 2\n"
            "  change options:  ... SOLVER.IMS_PER_BATCH 8 MODEL.WEIGHTS /path/model.pth\n"
            "  two machines:  (machine 0) ... --num-gpus 8 --num-machines 2 --machine-rank 0 "
            "--dist-url tcp://IP_OF_MACHINE0:29500\n"
            "                 (machine 1) ... --machine-rank 1, same --dist-url\n"
            "  torchrun:  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d "
            "--rdzv-endpoint HOST:29500 train_net.py --config-file cfg.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint (model, optimizer, scheduler, iteration, "
        "data position); without it, training starts at iteration 0 from MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate MODEL.WEIGHTS (or the last checkpoint with --resume) on DATASETS.TEST",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine, one per GPU (NCCL); on a machine without CUDA, this many "
        "CPU processes talking over gloo",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous of the process group, e.g. tcp://HOST:PORT of machine 0; 'auto' picks a "
        "free local port (one machine only)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.02 OUTPUT_DIR out/",
    )
    return parser


def seed_all_rng(seed: int | None = None) -> int:
    """Seeds python, numpy and torch; a ``None`` seed is drawn from the OS. Returns the seed."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """The seed of one training iteration of one process: a function of the three numbers only
    (numpy's ``SeedSequence``, so nearby inputs give unrelated streams), in ``[0, 2**31)``."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0]) & 0x7FFFFFFF


def collect_env_info() -> str:
    """Versions and hardware, for the top of every log."""
    import cv2
    import fvcore
    import pycocotools

    rows = [
        ("Python", sys.version.replace("\n", " ")),
        ("condinst_percep", f"{__version__} @ {os.path.dirname(os.path.dirname(__file__))}"),
        ("torch", torch.__version__),
        ("CUDA available", str(torch.cuda.is_available())),
        ("numpy", np.__version__),
        ("fvcore", getattr(fvcore, "__version__", "unknown")),
        ("pycocotools", getattr(pycocotools, "__version__", "unknown")),
        ("cv2", cv2.__version__),
        ("CPU threads (torch)", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA (torch build)", str(torch.version.cuda)))
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def default_setup(cfg, args: Any) -> None:
    """Per-process set-up before building anything.

    Creates ``cfg.OUTPUT_DIR``, logs to the console and ``OUTPUT_DIR/log.txt``, logs the
    environment, the command line and the config, writes the merged config to
    ``OUTPUT_DIR/config.yaml``, seeds every RNG with ``SEED + rank`` (a fresh seed when
    ``SEED < 0``) and sets cudnn benchmarking from ``CUDNN_BENCHMARK``.
    """
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()

    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank, name="condinst_percep")

    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info("Command line arguments: " + str(args))
    if getattr(args, "config_file", ""):
        with open(args.config_file) as f:
            logger.info(f"Contents of args.config_file={args.config_file}:\n{f.read()}")

    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")

    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    logger.info(f"Seeded python, numpy and torch with {seed}")
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
