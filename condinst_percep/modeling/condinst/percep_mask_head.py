"""CondInst's dynamic mask head plus the generic perceptual loss (Liu et al., CVPR 2021).

``loss_percep`` = λ · mean over the sampled instances of the embedding distance between
sigmoid(student mask logits) and a target mask, all n × 1 × Hp/4 × Wp/4 over the padded batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ...perceptual import PerceptualLoss, RandomPerceptualNet
from ...perceptual.random_net import VGG_STRUCTURES
from ...structures import Instances
from .dynamic_mask_head import MASK_HEAD_REGISTRY, DynamicMaskHead

TARGETS = ("teacher", "gt")


@MASK_HEAD_REGISTRY.register()
class PercepMaskHead(DynamicMaskHead):
    """:class:`DynamicMaskHead` that adds ``loss_percep`` beside ``loss_mask`` in training, on
    exactly the instances the dice loss sees. Inference is the parent's, untouched.

    Targets (``target``):

    - ``"gt"``: the instance's ground-truth bitmap at stride 4; each distinct GT is embedded
      once and shared by all its instances (``target_index``).
    - ``"teacher"``: the frozen ``teacher`` CondInst, run on the student's normalised padded
      batch without grad; its controller output at the instance's image, FPN level and location
      drives its own dynamic mask head over its own mask features; the sigmoid is the target.
      Under autocast it runs in the autocast dtype, like the student.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if target not in TARGETS:
            raise ValueError(f"MODEL.PERCEP.TARGET must be one of {TARGETS}, got {target!r}")
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
        self.target = target
        # Stored in __dict__, bypassing nn.Module registration (see the class docstring).
        self.__dict__["percep_loss"] = percep_loss.requires_grad_(False)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher

    @classmethod
    def from_config(cls, cfg) -> dict:
        p = cfg.MODEL.PERCEP
        if p.PRETRAINED_VGG:
            arch = {s: a for a, s in VGG_STRUCTURES.items()}.get(tuple(p.STRUCTURE))
            if arch is None:
                raise ValueError(
                    f"MODEL.PERCEP.PRETRAINED_VGG needs a VGG STRUCTURE {VGG_STRUCTURES}, got "
                    f"{tuple(p.STRUCTURE)}"
                )
            net = RandomPerceptualNet.from_torchvision_vgg(
                p.PRETRAINED_VGG, in_channels=1, arch=arch, seed=p.SEED
            )
        else:
            net = RandomPerceptualNet(
                1,
                structure=tuple(p.STRUCTURE),
                widths=tuple(p.WIDTHS),
                kernel_size=p.KERNEL_SIZE,
                init=p.INIT,
                init_scale=p.INIT_SCALE if p.INIT in ("normal", "uniform") else None,
                seed=p.SEED,
            )
        percep_loss = PerceptualLoss(
            net,
            layer_weights=tuple(p.LAYER_WEIGHTS) or None,
            loss_weight=p.LOSS_WEIGHT,
            chunk_size=p.CHUNK_SIZE or None,
        )
        teacher = None
        if p.TARGET == "teacher":
            from ..teacher import build_teacher

            teacher = build_teacher(cfg)
        return dict(
            super().from_config(cfg), percep_loss=percep_loss, target=p.TARGET, teacher=teacher
        )

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.percep_loss._apply(fn)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self

    def forward(
        self,
        mask_feats: torch.Tensor,
        mask_feat_stride: int,
        pred_instances: Instances,
        gt_instances: list[Instances] | None = None,
        batched_inputs: list[dict] | None = None,
        images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | Instances:
        """As :meth:`DynamicMaskHead.forward`; in training the dict also holds ``loss_percep``
        (float32 scalar). ``images`` (the student's padded batch) is required with a teacher."""
        if not self.training:
            return super().forward(mask_feats, mask_feat_stride, pred_instances)
        self._iter += 1
        logits = self.mask_logits(mask_feats, mask_feat_stride, pred_instances)
        losses = self.losses(logits, pred_instances, gt_instances)
        losses["loss_percep"] = self.perceptual_loss(logits, pred_instances, gt_instances, images)
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
                ``locations``, ``im_inds``, ``fpn_levels``).
            gt_instances: per image, ``gt_bitmasks`` (G, Hp/4, Wp/4) float32.
            images: (N, 3, Hp, Wp) the student's normalised padded batch (teacher only).
        With n == 0 the result is 0, still connected to ``mask_logits``; the teacher does not run.
        """
        if len(instances) == 0:
            return mask_logits.sum().float() * 0
        pred = mask_logits.float().sigmoid()
        if self.target == "gt":
            gt_bitmasks = torch.cat([g.gt_bitmasks for g in gt_instances])
            used, index = torch.unique(instances.gt_inds, return_inverse=True)
            return self.percep_loss(pred, gt_bitmasks[used].unsqueeze(1), target_index=index)
        return self.percep_loss(pred, self.teacher_soft_masks(images, instances))

    def teacher_soft_masks(self, images: torch.Tensor | None, instances: Instances) -> torch.Tensor:
        """(n, 1, Hp/4, Wp/4): sigmoid of the teacher's mask logits at the student's instances,
        without grad, in the teacher's compute dtype (the autocast dtype under autocast)."""
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
        with torch.no_grad():
            return self.teacher.mask_logits_on(images, instances).sigmoid()
