"""CondInst meta-architecture (AdelaiDet ``adet/modeling/condinst/condinst.py``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...config.validate import Report, check_choice
from ...layers import guard_batch_statistics
from ...layers.host_values import segment_ids
from ...structures import Instances, pad_to_batch
from ..fcos import FCOS
from ..fcos.fcos_targets import mask_centroids
from ..backbone import build_backbone, check_backbone_cfg
from .boxinst_loss import check_boxinst_cfg
from .boxinst_targets import BoxInstTargets
from .dynamic_mask_head import build_mask_head, check_mask_head_cfg
from .inference import postprocess
from .inputs import check_gt_instances, check_image
from .mask_branch import MaskBranch
from .percep_mask_head import check_percep_enabled
from .teacher import build_teacher, wants_teacher

logger = logging.getLogger(__name__)

# The config key that picks the norm of each head, by module-name prefix (first match wins);
# the backbone's come from its NORM_KEYS.
_HEAD_NORM_KEYS = {
    "proposal_generator.": "MODEL.FCOS.NORM",
    "mask_branch.": "MODEL.CONDINST.MASK_BRANCH.NORM",
}


class CondInst(nn.Module):
    """Backbone + FCOS (with the controller) + mask branch + dynamic mask head.

    Submodules are created in AdelaiDet's order and under its names (``backbone``,
    ``proposal_generator``, ``mask_head``, ``mask_branch``, ``controller``), so the state_dict
    matches AdelaiDet's key for key. Pixel mean/std are non-persistent buffers: they follow
    ``.to(device)`` but are not in the state_dict (AdelaiDet keeps them outside the module).

    Input: a list of dicts with ``image`` (3, H, W) uint8 in ``INPUT.FORMAT``, optional
    ``height``/``width`` (output size, default H, W) and, for training, ``instances`` with
    ``gt_boxes`` float (G, 4) XYXY, ``gt_classes`` int64 (G,), ``gt_masks`` bool (G, H, W)
    (not with BoxInst, ``box_targets``: its targets come from the boxes and the images).
    Training returns the loss dict; inference returns ``[{"instances": Instances((height,
    width), pred_boxes, scores, pred_classes, pred_masks bool (K, height, width))}]``.

    ``max_proposals`` and ``topk_proposals_per_im`` (-1: off) exclude each other (a config
    asking for both is refused by :meth:`check_cfg`).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: FCOS,
        mask_head: nn.Module,
        mask_branch: MaskBranch,
        controller: nn.Conv2d,
        pixel_mean: list[float],
        pixel_std: list[float],
        mask_out_stride: int = 4,
        max_proposals: int = -1,
        topk_proposals_per_im: int = -1,
        box_targets: BoxInstTargets | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.mask_head = mask_head
        self.mask_branch = mask_branch
        self.controller = controller
        for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            tensor = torch.tensor(value, dtype=torch.float32).view(-1, 1, 1)
            self.register_buffer(name, tensor, persistent=False)
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_im = topk_proposals_per_im
        self.box_targets = box_targets
        norm_keys = {f"backbone.{p}": key for p, key in backbone.NORM_KEYS.items()}
        guard_batch_statistics(self, {**norm_keys, **_HEAD_NORM_KEYS})

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The checks of every key CondInst reads: its own, then its parts' (backbone, FCOS,
        mask branch, mask head). See ``collect_problems``."""
        m, ci = cfg.MODEL, cfg.MODEL.CONDINST
        check_choice(cfg, bad, "MODEL.MASK_ON", (True,), "CondInst always predicts masks")
        check_choice(cfg, bad, "MODEL.KEYPOINT_ON", (False,))
        check_choice(cfg, bad, "MODEL.LOAD_PROPOSALS", (False,))
        check_choice(cfg, bad, "MODEL.PROPOSAL_GENERATOR.NAME", ("FCOS",))
        check_choice(
            cfg, bad, "MODEL.CONDINST.BOTTOM_PIXELS_REMOVED", (-1,),
            "AdelaiDet ignores it (BoxInst only)",
        )
        check_choice(
            cfg, bad, "TEST.DETECTIONS_PER_IMAGE", (100,),
            "CondInst keeps MODEL.FCOS.POST_NMS_TOPK_TEST detections",
        )
        if m.BOXINST.ENABLED:
            check_boxinst_cfg(cfg, bad)
        if len(m.PIXEL_MEAN) != 3 or len(m.PIXEL_STD) != 3 or min(m.PIXEL_STD) <= 0:
            bad("MODEL.PIXEL_STD", "PIXEL_MEAN and PIXEL_STD need 3 values, PIXEL_STD positive")
        if ci.MAX_PROPOSALS > 0 and ci.TOPK_PROPOSALS_PER_IM > 0:
            bad("MODEL.CONDINST.MAX_PROPOSALS", "and TOPK_PROPOSALS_PER_IM are mutually exclusive")
        for key in ("MAX_PROPOSALS", "TOPK_PROPOSALS_PER_IM"):
            if ci[key] == 0 or ci[key] < -1:
                bad(f"MODEL.CONDINST.{key}", "must be -1 (off) or a positive integer")
        mask_in = list(ci.MASK_BRANCH.IN_FEATURES)
        if mask_in and mask_in[0][1:].isdigit():
            mask_stride = 2 ** int(mask_in[0][1:])
            if ci.MASK_OUT_STRIDE < 1 or mask_stride % ci.MASK_OUT_STRIDE:
                bad(
                    "MODEL.CONDINST.MASK_OUT_STRIDE",
                    f"must divide the mask-branch stride {mask_stride} (of {mask_in[0]})",
                )
        check_backbone_cfg(cfg, bad)
        FCOS.check_cfg(cfg, bad)
        MaskBranch.check_cfg(cfg, bad)
        check_mask_head_cfg(cfg, bad)
        check_percep_enabled(cfg, bad)

    @classmethod
    def from_config(cls, cfg) -> dict:

        backbone = build_backbone(cfg)
        output_shape = backbone.output_shape()
        proposal_generator = FCOS(**FCOS.from_config(cfg, output_shape))
        # Built here, between the student's parts, so that the student's initialisation draws
        # the same random numbers as when the head built its own teacher.
        teacher = build_teacher(cfg, cls) if wants_teacher(cfg) else None
        mask_head = build_mask_head(cfg, teacher=teacher)
        mask_branch = MaskBranch(**MaskBranch.from_config(cfg, output_shape))
        controller = nn.Conv2d(
            proposal_generator.in_channels_to_top_module, mask_head.num_gen_params,
            kernel_size=3, stride=1, padding=1,
        )
        nn.init.normal_(controller.weight, std=0.01)
        nn.init.constant_(controller.bias, 0)
        ci = cfg.MODEL.CONDINST
        return dict(
            backbone=backbone,
            proposal_generator=proposal_generator,
            mask_head=mask_head,
            mask_branch=mask_branch,
            controller=controller,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            mask_out_stride=ci.MASK_OUT_STRIDE,
            max_proposals=ci.MAX_PROPOSALS,
            topk_proposals_per_im=ci.TOPK_PROPOSALS_PER_IM,
            box_targets=(
                BoxInstTargets(**BoxInstTargets.from_config(cfg))
                if cfg.MODEL.BOXINST.ENABLED
                else None
            ),
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------- inputs
    def preprocess_image(
        self, batched_inputs: list[dict]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalises each image, ``(x - mean) / std`` in float32, then zero-pads them at the
        bottom/right into one (N, 3, Hp, Wp) batch, Hp and Wp the largest sizes rounded up to
        ``backbone.size_divisibility``. Returns the batch and the un-padded (h, w) sizes."""
        if not batched_inputs:
            raise ValueError("CondInst got an empty list of inputs")
        images = []
        for i, x in enumerate(batched_inputs):
            image = check_image(i, x, len(self.pixel_mean))
            # non_blocking: a blocking host-to-GPU copy also waits for the stream's queue.
            image = image.to(self.device, non_blocking=True)
            images.append((image.float() - self.pixel_mean) / self.pixel_std)
        return pad_to_batch(images, self.backbone.size_divisibility)

    def add_bitmasks(self, gt_instances: list[Instances], padded_h: int, padded_w: int) -> None:
        """Adds to each image's GT ``gt_bitmasks`` float32 (G, Hp/s, Wp/s), the padded canvas
        sampled at ``[s//2::s, s//2::s]`` (s = MASK_OUT_STRIDE), and ``gt_centroids`` float32
        (G, 2), the masks' centres of mass used by FCOS centre sampling."""
        s = self.mask_out_stride
        for gt in gt_instances:
            masks = gt.gt_masks
            sampled = masks[:, s // 2 :: s, s // 2 :: s]
            bitmasks = torch.zeros(
                (len(masks), padded_h // s, padded_w // s), dtype=torch.float32, device=masks.device
            )
            bitmasks[:, : sampled.shape[1], : sampled.shape[2]] = sampled
            gt.gt_bitmasks = bitmasks
            gt.gt_centroids = mask_centroids(masks, (padded_h, padded_w))

    # ------------------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        images, image_sizes = self.preprocess_image(batched_inputs)
        if not self.training:
            dense = self.dense_outputs(images)
            return self.decode(dense, batched_inputs, image_sizes, images.shape[-2:])
        num_classes = self.proposal_generator.fcos_outputs.num_classes
        need_masks = self.box_targets is None
        gt_instances = [
            check_gt_instances(i, x, num_classes, need_masks) for i, x in enumerate(batched_inputs)
        ]
        gt_instances = [g.to(self.device, non_blocking=True) for g in gt_instances]
        features = self.backbone(images)
        self.proposal_generator.check_grid(features, images.shape[-2:])
        if self.box_targets is not None:
            self.box_targets(gt_instances, batched_inputs, tuple(images.shape[-2:]))
        else:
            self.add_bitmasks(gt_instances, images.shape[-2], images.shape[-1])
        mask_feats = self.mask_branch(features)
        # AdelaiDet's order: semantic, then FCOS, then mask losses.
        losses = self.mask_branch.losses(features, gt_instances, images.shape[-2:])
        extras, fcos_losses = self.proposal_generator(
            image_sizes, features, gt_instances, self.controller
        )
        losses.update(fcos_losses)
        pred_instances = self.sample_instances(extras["instances"], gt_instances)
        pred_instances.mask_head_params = pred_instances.top_feats
        losses.update(
            self.mask_head(
                mask_feats, self.mask_branch.out_stride, pred_instances, gt_instances,
                images=images,
            )
        )
        return losses

    def dense_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part of inference whose shapes are known from the input's: backbone, FPN, FCOS
        head with the controller, mask branch. ``images`` (N, 3, Hp, Wp) float32, normalised
        and padded (:meth:`preprocess_image`). Returns a flat tuple (the start of the exported
        graph, ``export.CondInstGraph``): per level ``l`` of ``L`` the class logits (N, C, H_l, W_l), box regression
        (N, 4, H_l, W_l), centerness (N, 1, H_l, W_l), controller outputs (N, G, H_l, W_l),
        all level by level in that order (``4 L`` tensors), then ``mask_feats`` (N, M, Hp/8,
        Wp/8). :meth:`decode` takes it."""
        features = self.backbone(images)
        self.proposal_generator.check_grid(features, images.shape[-2:])
        fcos = self.proposal_generator
        head = fcos.fcos_head([features[f] for f in fcos.in_features], self.controller)
        return (*(t for level in zip(*head) for t in level), self.mask_branch(features))

    def decode(
        self,
        dense: tuple[torch.Tensor, ...],
        batched_inputs: list[dict],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
    ) -> list[dict]:
        """Eager inference from :meth:`dense_outputs` (the exported graph's batched version:
        ``export.CondInstGraph``, tested equal): FCOS decoding and NMS per image, the dynamic mask head on the detections, masks pasted at each
        input's ``height`` x ``width``. Returns ``[{"instances": Instances}]``."""
        *per_level, mask_feats = dense
        logits, reg, ctrness, top_feats = (list(per_level[k::4]) for k in range(4))
        detections = self.proposal_generator.predict(image_sizes, logits, reg, ctrness, top_feats)
        return self.inference(detections, mask_feats, batched_inputs, image_sizes, padded_size)

    def controller_outputs(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Controller outputs at every FCOS location, (P_all, num_gen_params), flattened
        level-major like the training targets: a teacher indexes them with the student's
        ``pos_inds`` (same padded batch, same strides)."""
        return self.proposal_generator.flat_top_feats(features, self.controller)

    def mask_logits_on(self, images: torch.Tensor, instances: Instances) -> torch.Tensor:
        """This model's mask logits for instances found by another CondInst (the student) on the
        same padded batch: the teacher path of the perceptual loss.

        Runs this model's backbone and mask branch on ``images``, takes its own controller
        output at each instance's ``pos_inds`` (same image, FPN level and location) and runs its
        own dynamic mask head with the instances' ``locations``, ``im_inds`` and ``fpn_levels``.
        Gradients and train/eval mode are the caller's business (a teacher: ``eval()`` and
        ``torch.no_grad()``).

        No device value is read: the student's locations are a function of the padded size
        and its FPN strides (``FCOS.check_grid``, enforced in every forward), the teacher's
        strides and levels equal the student's (``teacher.check_teacher_cfg``, at build time),
        and its grid on the same batch is checked here, on the host.

        Args:
            images: (N, 3, Hp, Wp) float, the student's normalised, padded batch (the caller
                makes sure both models share the pixel convention).
            instances: the student's sampled positives (``pos_inds``, ``locations``,
                ``im_inds``, ``fpn_levels``).

        Returns:
            (n, 1, Hp/4, Wp/4) logits on the same padded canvas as the student's.

        Raises ValueError if this model's FCOS levels do not have the grid sizes of ``images``
        (``FCOS.check_grid``), since ``pos_inds`` would then point elsewhere.
        """
        features = self.backbone(images)
        self.proposal_generator.check_grid(features, images.shape[-2:])
        query = Instances(
            (0, 0),
            locations=instances.locations,
            im_inds=instances.im_inds,
            fpn_levels=instances.fpn_levels,
            mask_head_params=self.controller_outputs(features)[instances.pos_inds],
        )
        mask_feats = self.mask_branch(features)
        return self.mask_head.mask_logits(mask_feats, self.mask_branch.out_stride, query)

    def sample_instances(self, instances: Instances, gt_instances: list[Instances]) -> Instances:
        """The positive locations the mask loss sees: all of them, or MAX_PROPOSALS drawn at
        random (``torch.randperm`` on the device, as AdelaiDet), or per GT the
        ``TOPK_PROPOSALS_PER_IM / #GTs-with-positives-in-the-image`` (at least 1) best by
        ``max_c sigmoid(cls) * sigmoid(ctrness)``. Order with TOPK: by GT, then score."""
        n = len(instances)
        if 0 <= self.max_proposals < n:
            logger.debug("clipping proposals from %d to %d", n, self.max_proposals)
            inds = torch.randperm(n, device=instances.labels.device)
            return instances[inds[: self.max_proposals]]
        if self.topk_proposals_per_im > 0 and n > 0:
            return instances[self._topk_per_gt(instances, gt_instances)]
        return instances

    def _topk_per_gt(self, instances: Instances, gt_instances: list[Instances]) -> torch.Tensor:
        # Host syncs: only the final boolean selection (how many are kept depends on the data);
        # every size below is known on the host.
        device = instances.gt_inds.device
        num_gts = [len(g) for g in gt_instances]
        total_gts = sum(num_gts)
        gt_image = segment_ids(num_gts, device)
        has_pos = torch.zeros(total_gts, dtype=torch.int64, device=device)
        has_pos[instances.gt_inds] = 1
        gts_per_image = torch.zeros(len(num_gts), dtype=torch.int64, device=device)
        gts_per_image.index_add_(0, gt_image, has_pos)
        k_per_image = (self.topk_proposals_per_im // gts_per_image.clamp(min=1)).clamp(min=1)

        scores = instances.logits_pred.float().sigmoid().max(dim=1).values
        scores = scores * instances.ctrness_pred.float().sigmoid()
        by_score = torch.sort(scores, descending=True, stable=True).indices
        order = by_score[torch.sort(instances.gt_inds[by_score], stable=True).indices]
        sorted_gt = instances.gt_inds[order]
        # bincount would read the largest index on the host to size its output.
        counts = torch.zeros(total_gts, dtype=torch.int64, device=device)
        counts.index_add_(0, sorted_gt, torch.ones_like(sorted_gt))
        group_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=device) - group_start[sorted_gt]
        keep = rank < k_per_image[gt_image[sorted_gt]]
        return order[keep]

    # ---------------------------------------------------------------------------- inference
    def inference(
        self,
        detections: list[Instances],
        mask_feats: torch.Tensor,
        batched_inputs: list[dict],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
    ) -> list[dict]:
        """Runs the mask head once over all images' detections, then post-processes each."""
        padded = tuple(padded_size)
        merged = Instances.cat(
            [
                Instances(padded, im_inds=torch.full_like(d.pred_classes, i), **d.get_fields())
                for i, d in enumerate(detections)
            ]
        )
        merged.mask_head_params = merged.top_feat
        merged = self.mask_head(mask_feats, self.mask_branch.out_stride, merged)
        results = []
        start = 0
        for i, (x, size) in enumerate(zip(batched_inputs, image_sizes)):
            per_image = merged[start : start + len(detections[i])]
            start += len(detections[i])
            height, width = int(x.get("height", size[0])), int(x.get("width", size[1]))
            results.append({"instances": postprocess(per_image, size, height, width, padded)})
        return results
