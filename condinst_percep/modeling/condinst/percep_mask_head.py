"""CondInst's dynamic mask head plus the generic perceptual loss (Liu et al., CVPR 2021).

``loss_percep`` = λ · mean over the sampled instances of the embedding distance between
sigmoid(student mask logits) and a target mask, all n × 1 × Hp/4 × Wp/4 over the padded batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ...config.validate import Report
from ...layers.host_values import values_on
from ...perceptual import PerceptualLoss
from ...perceptual.precision import AUTOCAST_NAMES, autocast_context, autocast_dtype
from ...structures import Instances
from .dynamic_mask_head import MASK_HEAD_REGISTRY, DynamicMaskHead

TARGETS = ("teacher", "gt")


def check_percep_enabled(cfg, bad: Report) -> None:
    """``MODEL.PERCEP.ENABLED`` needs a :class:`PercepMaskHead` (which needs it True, see
    :meth:`PercepMaskHead.check_cfg`): the perceptual loss is computed nowhere else."""
    head = cfg.MODEL.CONDINST.MASK_HEAD.NAME
    if cfg.MODEL.PERCEP.ENABLED and head != "PercepMaskHead":
        bad("MODEL.CONDINST.MASK_HEAD.NAME", "MODEL.PERCEP.ENABLED needs 'PercepMaskHead'")


@MASK_HEAD_REGISTRY.register()
class PercepMaskHead(DynamicMaskHead):
    """:class:`DynamicMaskHead` that adds ``loss_percep`` beside ``loss_mask`` in training, on
    exactly the instances the dice loss sees. Inference is the parent's, untouched.

    Targets (``target``):

    - ``"gt"``: the instance's ground-truth bitmap at stride 4; each GT of the batch is
      embedded once and shared by all its instances (``target_index``).
    - ``"teacher"``: the frozen ``teacher`` CondInst, run on the student's normalised padded
      batch without grad; its controller output at the instance's image, FPN level and location
      drives its own dynamic mask head over its own mask features; the sigmoid is the target.
      It runs in ``teacher_autocast`` (``MODEL.TEACHER.AUTOCAST``), by default None: the
      training's precision (the autocast dtype under AMP, like the student).

    The loss network (inside ``percep_loss``) and the teacher are plain attributes, not
    submodules: they are absent from ``state_dict()``, ``parameters()`` and ``buffers()`` (so
    from optimizers and DDP's buffer broadcasts), and ``train()`` never puts the teacher in
    training mode; :meth:`_apply` still moves them with the student (``.to(device)``).
    """

    def __init__(
        self,
        *,
        percep_loss: PerceptualLoss,
        target: str = "gt",
        teacher: nn.Module | None = None,
        teacher_autocast: torch.dtype | None = None,
        fpn_strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (target == "teacher") != (teacher is not None):
            raise ValueError(
                f"PercepMaskHead: target {target!r} "
                + ("needs a teacher" if teacher is None else "takes no teacher")
            )
        if percep_loss.net.in_channels != 1:
            raise ValueError(
                "PercepMaskHead's loss network must take 1 channel (one mask per instance), got "
                f"in_channels={percep_loss.net.in_channels}"
            )
        if teacher_autocast not in AUTOCAST_NAMES.values():
            raise ValueError(
                f"teacher_autocast must be one of {tuple(AUTOCAST_NAMES.values())}, got "
                f"{teacher_autocast!r}"
            )
        self.target = target
        self.teacher_autocast = teacher_autocast
        self.fpn_strides = tuple(fpn_strides)
        # Stored in __dict__, bypassing nn.Module registration (see the class docstring).
        self.__dict__["percep_loss"] = percep_loss.requires_grad_(False)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The parent's checks, the perceptual loss's (``PerceptualLoss.check_cfg``), the
        target's and ``MODEL.TEACHER``'s."""
        super().check_cfg(cfg, bad)
        p, t = cfg.MODEL.PERCEP, cfg.MODEL.TEACHER
        if not p.ENABLED:
            bad("MODEL.PERCEP.ENABLED", "MASK_HEAD.NAME 'PercepMaskHead' needs it True")
        if p.TARGET not in TARGETS:
            bad("MODEL.PERCEP.TARGET", f"must be one of {TARGETS}")
        PerceptualLoss.check_cfg(cfg, bad)
        if not p.ENABLED:
            return
        if t.AUTOCAST not in AUTOCAST_NAMES:
            bad("MODEL.TEACHER.AUTOCAST", f"must be one of {tuple(AUTOCAST_NAMES)}")
        if p.TARGET == "teacher":
            for key in ("CONFIG_FILE", "WEIGHTS"):
                if not t[key]:
                    bad(f"MODEL.TEACHER.{key}", "MODEL.PERCEP.TARGET 'teacher' needs it")
        elif p.TARGET == "gt":
            if cfg.MODEL.BOXINST.ENABLED:
                bad(
                    "MODEL.PERCEP.TARGET",
                    "BoxInst (MODEL.BOXINST.ENABLED) has no ground-truth masks (its gt_bitmasks "
                    "are the boxes); use 'teacher'",
                )
            for key in ("CONFIG_FILE", "WEIGHTS", "AUTOCAST"):
                if t[key]:
                    bad(f"MODEL.TEACHER.{key}", "would be ignored: MODEL.PERCEP.TARGET is 'gt'")

    @classmethod
    def from_config(cls, cfg, teacher: nn.Module | None = None) -> dict:
        """``teacher``: the frozen model of ``MODEL.TEACHER`` (``CondInst.from_config`` builds
        it), required with ``MODEL.PERCEP.TARGET`` "teacher"."""
        p = cfg.MODEL.PERCEP
        speed_keys = (("CROP_MARGIN", int), ("CROP_APPROXIMATE", bool), ("CHANNELS_LAST", bool))
        for key, kind in speed_keys:
            value = p[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"MODEL.PERCEP.{key} must be {kind.__name__}, got {value!r}")
        try:
            percep_loss = PerceptualLoss(**PerceptualLoss.from_config(cfg, in_channels=1))
        except ValueError as e:
            raise ValueError(f"MODEL.PERCEP: {e}") from e
        return dict(
            super().from_config(cfg),
            percep_loss=percep_loss,
            target=p.TARGET,
            teacher=teacher,
            teacher_autocast=autocast_dtype(cfg.MODEL.TEACHER.AUTOCAST, "MODEL.TEACHER.AUTOCAST"),
            fpn_strides=tuple(cfg.MODEL.FCOS.FPN_STRIDES),
        )

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.percep_loss._apply(fn)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self

    def losses(
        self,
        mask_logits: torch.Tensor,
        instances: Instances,
        gt_instances: list[Instances],
        images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`DynamicMaskHead.losses` plus ``loss_percep`` (float32 scalar, see
        :meth:`perceptual_loss`) on the same instances. ``images`` (the student's padded batch)
        is required with a teacher."""
        losses = super().losses(mask_logits, instances, gt_instances)
        losses["loss_percep"] = self.perceptual_loss(mask_logits, instances, gt_instances, images)
        return losses

    def perceptual_loss(
        self,
        mask_logits: torch.Tensor,
        instances: Instances,
        gt_instances: list[Instances],
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """λ · PerceptualLoss(sigmoid(mask_logits), targets), a float32 scalar.

        Args:
            mask_logits: (n, 1, Hp/4, Wp/4) student logits.
            instances: the n sampled instances (``gt_inds``; for the teacher also ``pos_inds``,
                ``locations``, ``im_inds``, ``fpn_levels``; with a crop margin also
                ``reg_pred``, ``locations``, ``fpn_levels``).
            gt_instances: per image, ``gt_bitmasks`` (G, Hp/4, Wp/4) float32 (with a crop
                margin also ``gt_boxes`` (G, 4) XYXY input pixels).
            images: (N, 3, Hp, Wp) the student's normalised padded batch (teacher only).
        With n == 0 the result is 0, still connected to ``mask_logits``; the teacher does not run.
        """
        if len(instances) == 0:
            return mask_logits.sum().float() * 0
        pred = mask_logits.float().sigmoid()
        boxes = None
        if self.percep_loss.crop_margin is not None:
            boxes = self.crop_boxes(instances, gt_instances)
        if self.target == "gt":
            # Every GT embedded once, indexed on the device: torch.unique over the used ones
            # would be a host synchronisation.
            gt_bitmasks = torch.cat([g.gt_bitmasks for g in gt_instances]).unsqueeze(1)
            return self.percep_loss(
                pred, gt_bitmasks, target_index=instances.gt_inds, boxes=boxes,
                check_values=False,
            )
        # No value checks (each a host synchronisation): the inputs are this model's and the
        # teacher's outputs, and the training loop stops on a non-finite loss.
        return self.percep_loss(
            pred, self.teacher_soft_masks(images, instances), boxes=boxes, check_values=False
        )

    def crop_boxes(self, instances: Instances, gt_instances: list[Instances]) -> torch.Tensor:
        """(n, 4) float32 XYXY in mask pixels (stride ``mask_out_stride`` over the padded
        canvas): the union of each instance's GT box and its predicted FCOS box.

        The crop is exact only where the inputs are 0 outside the box; the student's sigmoid is
        never exactly 0, so the crop drops its (small) mass outside this union, and a soft
        teacher mask's outside the union as well. Mask pixel j samples input pixel s·j + s//2.
        """
        s = self.mask_out_stride
        gt = torch.cat([g.gt_boxes for g in gt_instances])[instances.gt_inds].float()
        strides = values_on(self.fpn_strides, gt.device)
        # reg_pred is (l, t, r, b) divided by the level's stride, as FCOS's regression targets.
        ltrb = instances.reg_pred.detach().float() * strides[instances.fpn_levels][:, None]
        loc = instances.locations.float()
        pred = torch.cat([loc - ltrb[:, :2], loc + ltrb[:, 2:]], dim=1)
        union = torch.cat(
            [torch.minimum(gt[:, :2], pred[:, :2]), torch.maximum(gt[:, 2:], pred[:, 2:])], dim=1
        )
        return (union - s // 2) / s

    def teacher_soft_masks(self, images: torch.Tensor | None, instances: Instances) -> torch.Tensor:
        """(n, 1, Hp/4, Wp/4): sigmoid of the teacher's mask logits at the student's instances,
        without grad, in ``teacher_autocast`` (the training's precision when None)."""
        if images is None:
            raise ValueError(
                "PercepMaskHead with a teacher needs `images`, the student's padded batch "
                "(CondInst.forward passes it in training)"
            )
        device = next(self.teacher.parameters()).device
        if device != images.device:
            raise ValueError(
                f"the teacher is on {device} but the images are on {images.device}: move the "
                "student with .to(), which moves the teacher along"
            )
        with torch.no_grad(), autocast_context(self.teacher_autocast, images.device.type):
            return self.teacher.mask_logits_on(images, instances).sigmoid()
