"""The generic perceptual loss on AdelaiDet's own CondInst.

``"CondInstPercepAdelaiDet"`` (registered on import; needs AdelaiDet) is AdelaiDet's
``adet.modeling.condinst.CondInst`` with its ``DynamicMaskHead`` replaced by
:class:`PercepDynamicMaskHead`, which adds ``loss_percep`` to AdelaiDet's losses. The loss,
its loss network and the teacher are condinst-percep's (:class:`PercepMaskHead`'s
``perceptual_loss``), not a copy; everything else (backbone, FCOS, mask branch, targets,
inference, the state_dict) is AdelaiDet's, so an AdelaiDet user keeps AdelaiDet's configs,
checkpoints and trainer and sets ``MODEL.META_ARCHITECTURE "CondInstPercepAdelaiDet"`` plus
our ``MODEL.PERCEP.*`` / ``MODEL.TEACHER.*`` keys (:func:`add_condinst_percep_config`).
"""

from __future__ import annotations

import torch

try:
    from adet.modeling.condinst import CondInst as AdelaiDetCondInst
    from adet.modeling.condinst.dynamic_mask_head import DynamicMaskHead as AdelaiDetMaskHead
except ImportError as e:
    raise ImportError(
        "condinst_percep.d2.adelaidet needs AdelaiDet (https://github.com/aim-uofa/AdelaiDet), "
        f"which is not importable here ({e}); see docs/detectron2.md. Without it, use "
        "MODEL.META_ARCHITECTURE 'CondInstPercep' (condinst_percep.d2)."
    ) from e

from ..config.validate import collect_problems
from ..modeling.condinst import CondInst, PercepMaskHead
from ..modeling.condinst.teacher import build_teacher, wants_teacher
from ..structures import Instances
from .config import condinst_cfg
from .registry import register_meta_arch


class PercepDynamicMaskHead(AdelaiDetMaskHead):
    """AdelaiDet's ``DynamicMaskHead`` plus ``loss_percep`` in training, computed by our
    :meth:`PercepMaskHead.perceptual_loss` on the very mask logits AdelaiDet's mask losses saw:
    CondInst's dice loss, or with ``MODEL.BOXINST.ENABLED`` BoxInst's projection and pairwise
    losses (then against a teacher only: BoxInst has no mask targets, and its ``gt_bitmasks``
    are the boxes).

    The :class:`PercepMaskHead` (its loss network, its teacher) is a plain attribute, not a
    submodule: the state_dict, parameters and buffers are AdelaiDet's head's; :meth:`_apply`
    moves it along. ``images``, the student's normalised padded batch, is set by the
    meta-architecture before each forward (the teacher runs on it).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        ours = condinst_cfg(cfg)
        if not ours.MODEL.PERCEP.ENABLED:
            raise ValueError(
                f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} adds loss_percep, "
                "but MODEL.PERCEP.ENABLED is False (use AdelaiDet's 'CondInst' for the plain model)"
            )
        # Our head's own checks of MODEL.PERCEP.* and MODEL.TEACHER.*, every problem at once
        # (with BoxInst, TARGET 'gt' is refused: BoxInst has no mask targets).
        collect_problems(ours, [PercepMaskHead.check_cfg])
        teacher = build_teacher(ours, CondInst) if wants_teacher(ours) else None
        self.__dict__["percep"] = PercepMaskHead(**PercepMaskHead.from_config(ours, teacher=teacher))
        self.images: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.percep._apply(fn)
        return self

    def mask_heads_forward_with_coords(self, mask_feats, mask_feat_stride, instances):
        # Kept for loss_percep: the same logits, not a second evaluation of the dynamic convs.
        self._logits = super().mask_heads_forward_with_coords(mask_feats, mask_feat_stride, instances)
        return self._logits

    def __call__(self, mask_feats, mask_feat_stride, pred_instances, gt_instances=None):
        images, self.images, self._logits = self.images, None, None
        out = super().__call__(mask_feats, mask_feat_stride, pred_instances, gt_instances)
        if not self.training:
            return out
        logits, self._logits = self._logits, None
        if logits is None:  # no instances: AdelaiDet's zero (loss_mask, or BoxInst's loss_prj)
            out["loss_percep"] = out["loss_prj" if self.boxinst_enabled else "loss_mask"].float()
            return out
        targets = [
            Instances(g.image_size, gt_bitmasks=g.gt_bitmasks.float(), gt_boxes=g.gt_boxes.tensor)
            for g in gt_instances
        ]
        out["loss_percep"] = self.percep.perceptual_loss(logits, pred_instances, targets, images)
        return out


class CondInstPercepAdelaiDet(AdelaiDetCondInst):
    """AdelaiDet's CondInst with :class:`PercepDynamicMaskHead` as ``mask_head`` (same place in
    the module tree, so the state_dict is AdelaiDet's key for key)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mask_head = PercepDynamicMaskHead(cfg).to(self.device)
        # The backbone's input is the normalised padded batch the teacher must see.
        self.backbone.register_forward_pre_hook(self._keep_images)

    def _keep_images(self, module, args) -> None:
        self.mask_head.images = args[0]


register_meta_arch("CondInstPercepAdelaiDet", CondInstPercepAdelaiDet)
