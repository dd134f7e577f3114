"""``CondInstGraph``: CondInst's whole inference as one traceable module, the thing exported.

From the padded uint8 batch to the detections of every image: normalisation, backbone, FPN,
FCOS head and controller, mask branch (``CondInst.dense_outputs``), FCOS decoding, per-image
class-aware NMS, ``POST_NMS_TOPK_TEST``, box scaling and clipping to the caller's image size,
the dynamic mask head on the survivors and the paste to the padded input's resolution.

The eager decoding (``FCOSOutputs.predict_proposals``, ``CondInst.inference``) loops over the
images and levels and reads sizes on the host; here the same selections are written for the
whole batch at once, so that only three sizes are data-dependent (torch.export's unbacked
sizes): the candidates above the threshold, the NMS survivors and the final detections. Each
step is the eager one's, operation for operation where the values are concerned:

- per level, the top ``k = min(PRE_NMS_TOPK_TEST, H_l W_l C)`` of the candidates' scores
  (non-candidates scored -1, below every score), re-sorted by flat (location, class) index:
  the eager ``nonzero`` order, and the eager set when there are at most ``k`` candidates (with
  more, the same set unless scores tie at the cut, where ``topk`` picks either way);
- NMS: :mod:`.nms_op` (``layers/nms.py`` itself in a torch graph), categories ``image * C +
  class`` so that images never suppress each other; within an image the visiting order is the
  eager one (same scores, same relative input order);
- ``POST_NMS_TOPK_TEST``: everything scoring at least the image's k-th best, ties kept, as the
  eager ``kthvalue`` cut.

Outputs, detections sorted by image then decreasing score: ``boxes`` float32 (K, 4) XYXY at
the output size, ``scores`` float32 (K,), ``classes`` int64 (K,), ``batch_index`` int64 (K,),
``masks`` float32 (K, Hp, Wp) mask probabilities on the padded input canvas.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import aligned_bilinear
from .nms_op import batched_nms_op

__all__ = ["CondInstGraph", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("boxes", "scores", "classes", "batch_index", "masks")


class CondInstGraph(nn.Module):
    """``model``'s inference (a CondInst in eval mode) as ``forward(images, image_sizes,
    output_sizes)``.

    Args (of ``forward``):
        images: (N, 3, Hp, Wp) uint8 in ``INPUT.FORMAT``, the resized images padded at the
            bottom/right to multiples of the backbone's ``size_divisibility`` (padding values
            are ignored: the graph zeroes them after normalising, as ``preprocess_image``).
        image_sizes: (N, 2) int64, each image's un-padded (h, w) in ``images``.
        output_sizes: (N, 2) int64, the (height, width) the boxes are scaled to.

    Returns the tensors named by :data:`OUTPUT_NAMES` (see the module docstring).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def fcos_outputs(self) -> nn.Module:
        """The thresholds and top-k sizes of the decoding (``FCOSOutputs``, no parameters)."""
        return self.model.proposal_generator.fcos_outputs

    def forward(
        self, images: torch.Tensor, image_sizes: torch.Tensor, output_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        *per_level, mask_feats = self.model.dense_outputs(self.normalize(images, image_sizes))
        candidates = self.candidates(per_level)
        det = self.select(candidates, image_sizes, output_sizes)
        probs = self.model.mask_head.dynamic_logits(
            mask_feats, self.model.mask_branch.out_stride, det["locations"], det["batch_index"],
            det["levels"], det["top_feats"],
        ).sigmoid()
        masks = aligned_bilinear(probs.float(), self.model.mask_out_stride)[:, 0]
        return det["boxes"], det["scores"], det["classes"], det["batch_index"], masks

    def normalize(self, images: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """(N, 3, Hp, Wp) uint8 -> float32 ``(x - mean) / std`` inside each image, 0 outside."""
        x = (images.float() - self.model.pixel_mean) / self.model.pixel_std
        rows = torch.arange(images.shape[2], device=images.device)
        cols = torch.arange(images.shape[3], device=images.device)
        inside = (rows[None, :, None] < image_sizes[:, 0, None, None]) & (
            cols[None, None, :] < image_sizes[:, 1, None, None]
        )
        return torch.where(inside[:, None], x, x.new_zeros(()))

    def candidates(self, per_level: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The candidates above the score threshold, the top k per image and level, flattened
        over the batch (image-major, then level, then (location, class) index: each image's
        eager order). Fields: ``boxes`` (n, 4) at the input's scale, ``scores`` sqrt(cls *
        ctr) (n,), ``classes``, ``batch_index``, ``levels`` int64 (n,), ``locations`` (n, 2),
        ``top_feats`` (n, G)."""
        fo = self.fcos_outputs
        levels = []
        for level, (logits, reg, ctrness, top_feat) in enumerate(
            zip(*(per_level[k::4] for k in range(4)))
        ):
            stride = fo.strides[level]
            n, c, h, w = logits.shape
            scores, is_candidate = fo.level_scores(logits, ctrness)
            reg = (reg * stride).float().permute(0, 2, 3, 1).reshape(n, h * w, 4)
            top_feat = top_feat.permute(0, 2, 3, 1).reshape(n, h * w, top_feat.shape[1])
            scores, is_candidate = scores.reshape(n, h * w * c), is_candidate.reshape(n, h * w * c)
            k = torch.sym_min(fo.pre_nms_topk_test, h * w * c)
            ranked = torch.where(is_candidate, scores, scores.new_full((), -1.0))
            top = ranked.topk(k, dim=1).indices.sort(dim=1).values
            loc_idx, classes = top // c, top % c
            # compute_locations' values at the chosen indices (exact integers in float32);
            # its meshgrid's reshape would guard on a 1-wide level.
            # (ONNX translates no remainder by a symbolic size.)
            row = loc_idx // w
            loc = torch.stack((loc_idx - row * w, row), dim=2) * stride + stride // 2
            loc = loc.float()
            r = reg.gather(1, loc_idx[:, :, None].expand(n, k, 4))
            levels.append(dict(
                valid=is_candidate.gather(1, top),
                boxes=torch.cat((loc - r[..., :2], loc + r[..., 2:]), dim=2),
                scores=torch.sqrt(scores.gather(1, top)),
                classes=classes,
                batch_index=torch.arange(n, device=top.device)[:, None].expand(n, k),
                levels=torch.full_like(top, level),
                locations=loc,
                top_feats=top_feat.gather(1, loc_idx[:, :, None].expand(n, k, top_feat.shape[2])),
            ))
        flat = {
            key: torch.cat([lv[key] for lv in levels], dim=1).flatten(0, 1) for key in levels[0]
        }
        keep = flat.pop("valid").nonzero().squeeze(1)
        return {key: value[keep] for key, value in flat.items()}

    def select(
        self, candidates: dict[str, torch.Tensor], image_sizes: torch.Tensor,
        output_sizes: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """NMS per image and class, ``POST_NMS_TOPK_TEST`` per image, boxes scaled to
        ``output_sizes`` and clipped, empty boxes dropped; sorted by image, then score."""
        fo = self.fcos_outputs
        batch, scores = candidates["batch_index"], candidates["scores"]
        categories = batch * fo.num_classes + candidates["classes"]
        keep = batched_nms_op(candidates["boxes"], scores, categories, fo.nms_thresh)
        # By image, keeping the score order inside each: a sort on unique keys (ONNX has no
        # stable sort).
        position = torch.arange(keep.shape[0], device=keep.device)
        keep = keep[torch.sort(batch[keep] * keep.shape[0] + position).indices]
        det = {key: value[keep] for key, value in candidates.items()}
        batch, scores = det["batch_index"], det["scores"]

        num_images = image_sizes.shape[0]
        counts = torch.zeros(num_images, dtype=torch.int64, device=batch.device)
        counts = counts.index_add(0, batch, torch.ones_like(batch))
        first = torch.cumsum(counts, 0) - counts
        k = fo.post_nms_topk_test
        # The k-th best of an image with more than k detections, else a -inf beyond the end.
        cut = torch.where(counts > k, first + k - 1, torch.full_like(counts, scores.shape[0]))
        thresholds = torch.cat((scores, scores.new_full((1,), float("-inf"))))[cut]
        in_top_k = scores >= thresholds[batch]

        # float64 ratios rounded to float32: the eager Python-float scale factors.
        scale = (output_sizes.double() / image_sizes.double()).float()[batch]
        limit = output_sizes.float()[batch]
        sy, sx, hmax, wmax = scale[:, 0], scale[:, 1], limit[:, 0], limit[:, 1]
        x1, y1, x2, y2 = det["boxes"].unbind(dim=1)
        boxes = torch.stack((
            torch.minimum((x1 * sx).clamp(min=0), wmax), torch.minimum((y1 * sy).clamp(min=0), hmax),
            torch.minimum((x2 * sx).clamp(min=0), wmax), torch.minimum((y2 * sy).clamp(min=0), hmax),
        ), dim=1)
        nonempty = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        det["boxes"] = boxes
        final = (in_top_k & nonempty).nonzero().squeeze(1)
        return {key: value[final] for key, value in det.items()}
