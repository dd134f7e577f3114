"""FCOS losses and inference (AdelaiDet ``FCOSOutputs``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import IOULoss, batched_nms, sigmoid_focal_loss
from ...layers.losses import compute_ious
from ...structures import Instances
from ...utils.comm import reduce_mean
from .fcos_targets import compute_targets, flatten_predictions

LOSS_NORMALIZERS = ("fg", "moving_fg", "all")
BOX_QUALITIES = ("ctrness", "iou")


def compute_ctrness_targets(reg_targets: torch.Tensor) -> torch.Tensor:
    """(P, 4) (l, t, r, b) -> (P,) ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``."""
    if len(reg_targets) == 0:
        return reg_targets.new_zeros(len(reg_targets))
    left_right = reg_targets[:, [0, 2]]
    top_bottom = reg_targets[:, [1, 3]]
    ctrness = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
    )
    return torch.sqrt(ctrness)


class FCOSOutputs(nn.Module):
    """Targets, losses and inference of FCOS. Holds no parameters or buffers."""

    def __init__(
        self,
        *,
        num_classes: int = 80,
        strides: list[int] = (8, 16, 32, 64, 128),
        sizes_of_interest: list[int] = (64, 128, 256, 512),
        center_sample: bool = True,
        pos_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loc_loss_type: str = "giou",
        box_quality: str = "ctrness",
        loss_normalizer_cls: str = "fg",
        loss_weight_cls: float = 1.0,
        thresh_with_ctr: bool = False,
        pre_nms_thresh_test: float = 0.05,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_test: int = 100,
        nms_thresh: float = 0.6,
    ):
        super().__init__()
        if box_quality not in BOX_QUALITIES:
            raise ValueError(
                f"MODEL.FCOS.BOX_QUALITY must be one of {BOX_QUALITIES}, got {box_quality!r}"
            )
        if loss_normalizer_cls not in LOSS_NORMALIZERS:
            raise ValueError(
                f"MODEL.FCOS.LOSS_NORMALIZER_CLS must be one of {LOSS_NORMALIZERS}, "
                f"got {loss_normalizer_cls!r}"
            )
        self.num_classes = num_classes
        self.strides = list(strides)
        self.sizes_of_interest = list(sizes_of_interest)
        self.center_sample = center_sample
        self.radius = pos_radius
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loc_loss_func = IOULoss(loc_loss_type)
        self.box_quality = box_quality
        self.loss_normalizer_cls = loss_normalizer_cls
        self.loss_weight_cls = loss_weight_cls
        self.thresh_with_ctr = thresh_with_ctr
        self.pre_nms_thresh_test = pre_nms_thresh_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh = nms_thresh
        # AdelaiDet's "moving_fg" normaliser: an EMA of the number of positives (not saved),
        # a float64 tensor on the device after the first step so that reading it needs no sync.
        self.moving_num_fg: float | torch.Tensor = 100.0
        self.moving_num_fg_momentum = 0.9

    @classmethod
    def from_config(cls, cfg) -> dict:
        f = cfg.MODEL.FCOS
        return dict(
            num_classes=f.NUM_CLASSES,
            strides=list(f.FPN_STRIDES),
            sizes_of_interest=list(f.SIZES_OF_INTEREST),
            center_sample=f.CENTER_SAMPLE,
            pos_radius=f.POS_RADIUS,
            focal_loss_alpha=f.LOSS_ALPHA,
            focal_loss_gamma=f.LOSS_GAMMA,
            loc_loss_type=f.LOC_LOSS_TYPE,
            box_quality=f.BOX_QUALITY,
            loss_normalizer_cls=f.LOSS_NORMALIZER_CLS,
            loss_weight_cls=f.LOSS_WEIGHT_CLS,
            thresh_with_ctr=f.THRESH_WITH_CTR,
            pre_nms_thresh_test=f.INFERENCE_TH_TEST,
            pre_nms_topk_test=f.PRE_NMS_TOPK_TEST,
            post_nms_topk_test=f.POST_NMS_TOPK_TEST,
            nms_thresh=f.NMS_TH,
        )

    # ----------------------------------------------------------------------------- training
    def losses(
        self,
        logits_pred: list[torch.Tensor],
        reg_pred: list[torch.Tensor],
        ctrness_pred: list[torch.Tensor],
        locations: list[torch.Tensor],
        gt_instances: list[Instances],
        top_feats: list[torch.Tensor] | None = None,
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """FCOS losses over a batch.

        Args:
            logits_pred, reg_pred, ctrness_pred, top_feats: per level, the head's outputs
                (N, C, H_l, W_l) (see ``FCOSHead.forward``).
            locations: per level, (H_l*W_l, 2) location coordinates.
            gt_instances: per image, ``gt_boxes``, ``gt_classes`` and optionally ``gt_centroids``.

        Returns:
            ``(extras, losses)``. ``losses``: ``loss_fcos_cls``, ``loss_fcos_loc`` and
            ``loss_fcos_ctr`` (``loss_fcos_iou`` instead with BOX_QUALITY "iou"), float32
            scalars. ``extras``: ``"instances"``, the positive locations (see
            :meth:`fcos_losses`), ``"loss_denorm"`` (a float32 0-dim tensor), and
            ``"top_feats"``, the controller outputs of **all** locations (P_all, K) flattened
            level-major, so that ``pos_inds`` indexes them.
        """
        instances = compute_targets(
            locations, self.strides, self.sizes_of_interest, gt_instances, self.num_classes,
            self.center_sample, self.radius,
        )
        instances.logits_pred = flatten_predictions(logits_pred)
        instances.reg_pred = flatten_predictions(reg_pred)
        instances.ctrness_pred = flatten_predictions(ctrness_pred).reshape(-1)
        if top_feats:
            instances.top_feats = flatten_predictions(top_feats)
        extras, losses = self.fcos_losses(instances)
        if top_feats:
            extras["top_feats"] = instances.top_feats
        return extras, losses

    def fcos_losses(self, instances: Instances) -> tuple[dict, dict[str, torch.Tensor]]:
        """Losses from the flattened targets and predictions of all locations.

        The positive-location Instances returned in ``extras["instances"]`` carry AdelaiDet's
        fields: ``labels, gt_inds, im_inds, reg_targets, locations, fpn_levels, logits_pred,
        reg_pred, ctrness_pred, top_feats`` (if given), ``pos_inds`` (int64 index of each
        positive among all flattened locations) and ``gt_ctrs`` (centerness targets).
        Predictions are upcast to float32 for the losses (they may be bf16/fp16 under autocast).

        The only host synchronisation is ``nonzero`` for ``pos_inds`` (the number of positives
        is data-dependent and sizes every later tensor). The normalisers stay on the device:
        AdelaiDet's ``max(reduce_mean(x).item(), floor)`` is ``reduce_mean(x).clamp_min(floor)``.
        """
        losses = {}
        labels = instances.labels
        pos_inds = torch.nonzero(labels != self.num_classes).squeeze(1)
        logits = instances.logits_pred.float()
        num_pos = torch.full((), float(len(pos_inds)), device=logits.device)
        num_pos_avg = reduce_mean(num_pos).clamp_min(1.0)

        class_target = torch.zeros_like(logits)
        class_target[pos_inds, labels[pos_inds]] = 1
        class_loss = sigmoid_focal_loss(
            logits, class_target, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        if self.loss_normalizer_cls == "moving_fg":
            # float64, as AdelaiDet's Python-float EMA, so that the values match it exactly;
            # the first step's Python float enters as a scalar argument, not a copy.
            self.moving_num_fg = (
                self.moving_num_fg_momentum * self.moving_num_fg
                + (1 - self.moving_num_fg_momentum) * num_pos_avg.double()
            )
            class_loss = class_loss / self.moving_num_fg.float()
        elif self.loss_normalizer_cls == "fg":
            class_loss = class_loss / num_pos_avg
        else:
            num_samples = torch.full((), float(len(labels)), device=logits.device)
            num_samples_avg = reduce_mean(num_samples).clamp_min(1.0)
            class_loss = class_loss / num_samples_avg
        losses["loss_fcos_cls"] = class_loss * self.loss_weight_cls

        instances = instances[pos_inds]
        instances.pos_inds = pos_inds
        ctrness_targets = compute_ctrness_targets(instances.reg_targets)
        instances.gt_ctrs = ctrness_targets
        loss_denorm = reduce_mean(ctrness_targets.sum()).clamp_min(1e-6)
        reg_pred = instances.reg_pred.float()
        ctrness_pred = instances.ctrness_pred.float()
        if len(pos_inds) > 0:
            if self.box_quality == "ctrness":
                reg_loss = self.loc_loss_func(reg_pred, instances.reg_targets, ctrness_targets)
                losses["loss_fcos_loc"] = reg_loss / loss_denorm
                losses["loss_fcos_ctr"] = F.binary_cross_entropy_with_logits(
                    ctrness_pred, ctrness_targets, reduction="sum"
                ) / num_pos_avg
            else:
                ious, _ = compute_ious(reg_pred, instances.reg_targets)
                reg_loss = self.loc_loss_func(reg_pred, instances.reg_targets)
                losses["loss_fcos_loc"] = reg_loss / num_pos_avg
                losses["loss_fcos_iou"] = F.binary_cross_entropy_with_logits(
                    ctrness_pred, ious.detach(), reduction="sum"
                ) / num_pos_avg
        else:
            losses["loss_fcos_loc"] = reg_pred.sum() * 0
            quality = "loss_fcos_ctr" if self.box_quality == "ctrness" else "loss_fcos_iou"
            losses[quality] = ctrness_pred.sum() * 0
        return {"instances": instances, "loss_denorm": loss_denorm}, losses

    # ---------------------------------------------------------------------------- inference
    def predict_proposals(
        self,
        logits_pred: list[torch.Tensor],
        reg_pred: list[torch.Tensor],
        ctrness_pred: list[torch.Tensor],
        locations: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        top_feats: list[torch.Tensor] | None = None,
    ) -> list[Instances]:
        """Detections per image: ``pred_boxes`` float32 (K, 4) XYXY in input pixels (not
        clipped), ``scores`` sqrt(cls * ctr) float32 (K,), ``pred_classes`` int64 (K,),
        ``locations`` (K, 2), ``fpn_levels`` int64 (K,), and ``top_feat`` (K, num_gen_params)
        if ``top_feats`` is given; sorted by decreasing score (class-aware NMS), at most
        ``post_nms_topk_test`` plus ties at the cut."""
        per_image: list[list[Instances]] = [[] for _ in image_sizes]
        for level, (loc, logits, reg, ctr) in enumerate(
            zip(locations, logits_pred, reg_pred, ctrness_pred)
        ):
            top = top_feats[level] if top_feats else None
            for i, det in enumerate(
                self._predict_level(loc, logits, reg * self.strides[level], ctr, image_sizes, top)
            ):
                det.fpn_levels = torch.full_like(det.pred_classes, level)
                per_image[i].append(det)
        return [self._select_over_all_levels(Instances.cat(dets)) for dets in per_image]

    def level_scores(
        self, logits: torch.Tensor, ctrness: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's scores and candidates, for the eager decoding and the exported graph.

        ``logits`` (N, C, H, W) and ``ctrness`` (N, 1, H, W), any float dtype ->
        ``scores`` float32 (N, H*W, C), sigmoid(cls) * sigmoid(ctr) (the detection score
        before its square root), and ``candidates`` bool (N, H*W, C): above
        ``pre_nms_thresh_test``, with the centerness factor (``thresh_with_ctr``) or without.
        """
        n, c, h, w = logits.shape
        scores = logits.float().permute(0, 2, 3, 1).reshape(n, h * w, c).sigmoid()
        ctr = ctrness.float().permute(0, 2, 3, 1).reshape(n, h * w, 1).sigmoid()
        if self.thresh_with_ctr:
            scores = scores * ctr
        candidates = scores > self.pre_nms_thresh_test
        if not self.thresh_with_ctr:
            scores = scores * ctr
        return scores, candidates

    def _predict_level(
        self,
        locations: torch.Tensor,
        logits: torch.Tensor,
        reg: torch.Tensor,
        ctrness: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        top_feat: torch.Tensor | None,
    ) -> list[Instances]:
        n = logits.shape[0]
        cls, candidates = self.level_scores(logits, ctrness)
        reg = reg.float().permute(0, 2, 3, 1).reshape(n, -1, 4)
        if top_feat is not None:
            top_feat = top_feat.permute(0, 2, 3, 1).reshape(n, reg.shape[1], -1)

        results = []
        for i in range(n):
            # A location may give several (location, class) candidates.
            loc_idx, classes = candidates[i].nonzero(as_tuple=True)
            scores = cls[i, loc_idx, classes]
            if len(scores) > self.pre_nms_topk_test:
                scores, top = scores.topk(self.pre_nms_topk_test, sorted=False)
                loc_idx, classes = loc_idx[top], classes[top]
            loc, r = locations[loc_idx], reg[i, loc_idx]
            boxes = torch.cat((loc - r[:, :2], loc + r[:, 2:]), dim=1)
            det = Instances(
                image_sizes[i], pred_boxes=boxes, scores=torch.sqrt(scores),
                pred_classes=classes, locations=loc,
            )
            if top_feat is not None:
                det.top_feat = top_feat[i, loc_idx]
            results.append(det)
        return results

    def _select_over_all_levels(self, detections: Instances) -> Instances:
        keep = batched_nms(
            detections.pred_boxes, detections.scores, detections.pred_classes, self.nms_thresh
        )
        detections = detections[keep]
        num = len(detections)
        if num > self.post_nms_topk_test > 0:
            # Everything scoring at least the k-th best survives, so ties can keep more than k.
            thresh = torch.kthvalue(detections.scores, num - self.post_nms_topk_test + 1).values
            detections = detections[detections.scores >= thresh]
        return detections
