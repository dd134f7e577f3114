#!/usr/bin/env python
"""Train and evaluate condinst-percep with detectron2's own engine (the PointRend pattern).

detectron2's ``DefaultTrainer`` (its data loader and ``DatasetMapper``, optimizer, schedule,
hooks, ``DetectionCheckpointer``, ``COCOEvaluator``), with our config keys added and our models
registered. Any dataset registered in detectron2's ``DatasetCatalog`` can be trained and
evaluated; the command line is detectron2's ``tools/train_net.py``'s::

    python tools/train_net_d2.py --config-file configs/CondInst/MS_R_50_1x.yaml --num-gpus 8 \\
        MODEL.META_ARCHITECTURE CondInstPercep
    python tools/train_net_d2.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net_d2.py --config-file ... --resume

``MODEL.META_ARCHITECTURE``: ``CondInstPercep`` (our CondInst; with ``MODEL.PERCEP.ENABLED``
our perceptual head), ``CondInstPercepAdelaiDet`` (AdelaiDet's CondInst with our perceptual
head; needs AdelaiDet) or AdelaiDet's own ``CondInst``. The base config is AdelaiDet's
``get_cfg()`` where AdelaiDet is importable, detectron2's otherwise. See docs/detectron2.md.
"""

import os

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, verify_results

from condinst_percep.d2 import add_condinst_percep_config

try:
    from adet.config import get_cfg

    import condinst_percep.d2.adelaidet  # noqa: F401  registers CondInstPercepAdelaiDet
except ImportError:
    from detectron2.config import get_cfg


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer, evaluating box and mask AP with its COCOEvaluator."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), output_dir=output_folder)


def setup(args):
    cfg = get_cfg()
    add_condinst_percep_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
