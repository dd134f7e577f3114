"""Our CondInst as a detectron2 meta-architecture, ``"CondInstPercep"``."""

from __future__ import annotations

from ..config import validate
from ..config.validate import collect_problems
from ..modeling import check_device, check_model_cfg
from ..modeling.condinst import CondInst
from .config import condinst_cfg
from .registry import register_meta_arch
from .structures import from_d2_inputs, to_d2_instances


class CondInstPercep(CondInst):
    """condinst-percep's CondInst (with the perceptual mask head when ``MODEL.PERCEP.ENABLED``)
    built from a detectron2 config, speaking detectron2's structures.

    Built by ``detectron2.modeling.build_model(cfg)`` with ``MODEL.META_ARCHITECTURE
    "CondInstPercep"``; ``cfg`` needs our keys (:func:`add_condinst_percep_config`), and the
    model's keys are checked as our ``build_model`` checks them. The modules and the state_dict are our
    CondInst's, which are AdelaiDet's, so checkpoints move between detectron2's
    ``DetectionCheckpointer``, our ``Checkpointer`` and AdelaiDet unchanged.

    Input: what detectron2's ``DatasetMapper`` gives: ``image`` (3, H, W) uint8 (or float, as
    ``DefaultPredictor`` passes), ``height``, ``width`` and, in training, ``instances`` with
    ``gt_boxes`` (``Boxes``), ``gt_classes``, ``gt_masks`` (``PolygonMasks`` or ``BitMasks``).
    Training returns the loss dict; inference ``[{"instances": detectron2 Instances}]`` with
    ``pred_boxes`` (``Boxes``), ``scores``, ``pred_classes``, ``pred_masks`` bool (K, height,
    width).
    """

    def __init__(self, cfg):
        ours = condinst_cfg(cfg)
        # The checks of condinst_percep.modeling.build_model: the model's keys (data, solver and
        # test keys are detectron2's business here).
        collect_problems(ours, [validate.check_cfg, check_model_cfg])
        check_device(ours.MODEL.DEVICE)
        super().__init__(**CondInst.from_config(ours))

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return super().forward(from_d2_inputs(batched_inputs))
        results = super().forward(batched_inputs)
        return [{"instances": to_d2_instances(r["instances"])} for r in results]


register_meta_arch("CondInstPercep", CondInstPercep)
