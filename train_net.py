#!/usr/bin/env python
"""Trains and evaluates CondInst (with the perceptual loss when the config turns it on).

    python train_net.py --config-file configs/Quickstart/CondInst_shapes.yaml
    python train_net.py --config-file configs/CondInst/MS_R_50_1x.yaml --num-gpus 4
    python train_net.py --config-file CFG.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file CFG.yaml --resume

Run ``python train_net.py -h`` for multi-machine and torchrun examples.
"""

from __future__ import annotations

from typing import Any

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.engine import (
    Trainer,
    default_argument_parser,
    default_setup,
    launch,
    validate_cfg,
)
from condinst_percep.modeling import build_model


def setup(args):
    """The config from ``--config-file`` and the command-line overrides, frozen, plus the
    per-process set-up (output folder, logs, seeds)."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args) -> dict[str, Any]:
    """Trains (or only evaluates) in this process; returns the final evaluation results."""
    cfg = setup(args)
    if args.eval_only:
        validate_cfg(cfg)
        model = build_model(cfg, checked=True)
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, cfg=cfg)
        resume = args.resume and checkpointer.has_checkpoint()
        if not resume and not cfg.MODEL.WEIGHTS:
            raise ValueError(
                "--eval-only has no weights to evaluate: set MODEL.WEIGHTS, or use --resume with "
                f"a last_checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR})"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
