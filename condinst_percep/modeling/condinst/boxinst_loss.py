"""BoxInst's losses (Tian et al., CVPR 2021; AdelaiDet ``dynamic_mask_head.py``): masks learnt
from boxes alone.

- Projection term: the mask's max-projections onto the x and y axes match the box's (dice).
- Pairwise term: neighbouring pixels (``size`` x ``size`` window without its centre, spaced by
  ``dilation``) whose LAB colours are similar (``image_color_similarity >= color_thresh``)
  and that lie in the box should get the same label; loss ``-log P(same)`` with ``P(same) =
  p_i p_j + (1 - p_i)(1 - p_j)``, averaged over those pairs and ramped in linearly over
  ``warmup_iters`` training calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config.validate import Report
from ...layers import dice_coefficient
from ...structures import Instances


def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Each pixel's ``kernel_size**2 - 1`` neighbours (zero outside), row-major without the
    centre: (N, C, H, W) → (N, C, kernel_size**2 - 1, H, W)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"MODEL.BOXINST.PAIRWISE.SIZE must be odd, got {kernel_size}")
    n, c, h, w = x.shape
    padding = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    unfolded = F.unfold(x, kernel_size=kernel_size, padding=padding, dilation=dilation)
    unfolded = unfolded.reshape(n, c, -1, h, w)
    centre = kernel_size**2 // 2
    return torch.cat((unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]), dim=2)


def projection_term(mask_scores: torch.Tensor, gt_bitmasks: torch.Tensor) -> torch.Tensor:
    """Mean over instances of dice(max over y) + dice(max over x); scores and box masks
    (n, 1, H, W) float → float scalar."""
    loss_y = dice_coefficient(
        mask_scores.max(dim=2, keepdim=True)[0], gt_bitmasks.max(dim=2, keepdim=True)[0]
    )
    loss_x = dice_coefficient(
        mask_scores.max(dim=3, keepdim=True)[0], gt_bitmasks.max(dim=3, keepdim=True)[0]
    )
    return (loss_x + loss_y).mean()


def pairwise_term(mask_logits: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``-log(p_i p_j + (1 - p_i)(1 - p_j))`` for each pixel i and neighbour j, in log space
    (logsigmoid and a log-sum-exp of two terms): (n, 1, H, W) logits → (n, K, H, W),
    K = kernel_size**2 - 1. Outside the image the neighbour's log-probabilities are 0 (as
    AdelaiDet's zero-padded unfold), so its pairs there are masked out by the colour weights."""
    log_fg = F.logsigmoid(mask_logits)
    log_bg = F.logsigmoid(-mask_logits)
    log_same_fg = log_fg[:, :, None] + unfold_wo_center(log_fg, kernel_size, dilation)
    log_same_bg = log_bg[:, :, None] + unfold_wo_center(log_bg, kernel_size, dilation)
    top = torch.max(log_same_fg, log_same_bg)
    log_same = torch.log(torch.exp(log_same_fg - top) + torch.exp(log_same_bg - top)) + top
    return -log_same[:, 0]


def check_boxinst_cfg(cfg, bad: Report) -> None:
    """The checks of ``MODEL.BOXINST.PAIRWISE`` (with BoxInst on; see ``collect_problems``)."""
    p = cfg.MODEL.BOXINST.PAIRWISE
    if p.SIZE < 1 or p.SIZE % 2 != 1:
        bad("MODEL.BOXINST.PAIRWISE.SIZE", "must be odd and >= 1 (the neighbourhood's side)")
    if p.DILATION < 1:
        bad("MODEL.BOXINST.PAIRWISE.DILATION", "must be >= 1")
    if p.WARMUP_ITERS < 1:
        bad("MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", "must be >= 1")
    if not 0 <= p.COLOR_THRESH <= 1:
        bad("MODEL.BOXINST.PAIRWISE.COLOR_THRESH", "a colour similarity in [0, 1]")


class BoxInstLosses:
    """``{"loss_prj", "loss_pairwise"}`` in place of CondInst's dice ``loss_mask``; called by
    :meth:`DynamicMaskHead.losses`. No parameters (a plain attribute of the head).

    Needs per image in ``gt_instances``: ``gt_bitmasks`` (G, Hp/4, Wp/4) float32 box masks and
    ``image_color_similarity`` (G, K, Hp/4, Wp/4) float32, the image's similarity expanded
    over its G boxes (:class:`~.boxinst_targets.BoxInstTargets`).
    """

    def __init__(
        self,
        pairwise_size: int = 3,
        pairwise_dilation: int = 2,
        color_thresh: float = 0.3,
        warmup_iters: int = 10000,
    ):
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.color_thresh = color_thresh
        self.warmup_iters = warmup_iters

    @classmethod
    def from_config(cls, cfg) -> dict:
        p = cfg.MODEL.BOXINST.PAIRWISE
        return dict(
            pairwise_size=p.SIZE,
            pairwise_dilation=p.DILATION,
            color_thresh=p.COLOR_THRESH,
            warmup_iters=p.WARMUP_ITERS,
        )

    @staticmethod
    def per_image(gt_instances: list[Instances]) -> torch.Tensor:
        """(N, K, Hp/4, Wp/4): each image's colour similarity once (zeros for an image without
        boxes, where no instance can be), instead of AdelaiDet's copy per GT."""
        ref = next(g.image_color_similarity for g in gt_instances if len(g))
        return torch.stack([
            g.image_color_similarity[0] if len(g) else ref.new_zeros(ref.shape[1:])
            for g in gt_instances
        ])

    def __call__(
        self,
        mask_logits: torch.Tensor,
        instances: Instances,
        gt_instances: list[Instances],
        iteration: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Args: ``mask_logits`` (n, 1, Hp/4, Wp/4); ``instances`` with ``gt_inds`` into the
        batch's concatenated GTs; ``iteration`` the head's ``_iter`` buffer (1,) after this
        call's increment (the warm-up factor is ``min(iteration / warmup_iters, 1)``)."""
        if len(instances) == 0:
            zero = mask_logits.sum().float() * 0
            return {"loss_prj": zero, "loss_pairwise": zero}
        logits = mask_logits.float()
        gt_bitmasks = torch.cat([g.gt_bitmasks for g in gt_instances])
        gt_bitmasks = gt_bitmasks[instances.gt_inds].unsqueeze(1).float()
        similarity = self.per_image(gt_instances)[instances.im_inds].float()

        loss_prj = projection_term(logits.sigmoid(), gt_bitmasks)
        pairwise = pairwise_term(logits, self.pairwise_size, self.pairwise_dilation)
        weights = (similarity >= self.color_thresh).float() * gt_bitmasks
        loss_pairwise = (pairwise * weights).sum() / weights.sum().clamp(min=1.0)
        # On the device (no host read of the counter): min(iter / warmup, 1).
        warmup = (iteration.float() / float(self.warmup_iters)).clamp(max=1.0)
        return {"loss_prj": loss_prj, "loss_pairwise": loss_pairwise * warmup[0]}
