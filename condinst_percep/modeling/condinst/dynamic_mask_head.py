"""CondInst's dynamic mask head: a tiny per-instance FCN whose weights come from the controller.

Extension points (used by the perceptual-loss head and the teacher; see docs/condinst.md):

- :meth:`DynamicMaskHead.losses` turns the mask logits into the loss dict. It is *the* place a
  subclass changes training: ``forward`` computes the logits once and calls it, so a subclass
  overrides ``losses`` only, calls ``super().losses(...)`` and adds its entries (e.g.
  ``loss_percep``) computed on exactly the same instances.
- :meth:`DynamicMaskHead.mask_logits` computes mask logits ``(n, 1, Hp/4, Wp/4)`` from
  ``mask_feats`` and an Instances carrying ``locations``, ``im_inds``, ``fpn_levels`` and
  ``mask_head_params``; a teacher calls it with its own ``mask_feats`` and controller outputs.
- The class used by ``CondInst`` is looked up in :data:`MASK_HEAD_REGISTRY` under
  ``cfg.MODEL.CONDINST.MASK_HEAD.NAME`` (see :func:`build_mask_head`), so a subclass plugs in
  without editing the meta-architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.registry import Registry
from torch import nn

from ...config.validate import Report, check_choice
from ...layers import aligned_bilinear, dice_coefficient
from ...structures import Instances
from ..fcos.fcos_targets import compute_locations
from .boxinst_loss import BoxInstLosses

MASK_HEAD_REGISTRY = Registry("MASK_HEAD")
MASK_HEAD_REGISTRY.__doc__ = """Mask heads of CondInst, built as ``cls(**cls.from_config(cfg))``,
their keys checked by ``cls.check_cfg(cfg, bad)``."""


def check_mask_head_cfg(cfg, bad: Report) -> None:
    """``MODEL.CONDINST.MASK_HEAD.NAME`` (a registered head) and that head's keys."""
    name = cfg.MODEL.CONDINST.MASK_HEAD.NAME
    registered = sorted(k for k, _ in MASK_HEAD_REGISTRY)
    check_choice(cfg, bad, "MODEL.CONDINST.MASK_HEAD.NAME", registered, "not registered")
    if name in registered:
        MASK_HEAD_REGISTRY.get(name).check_cfg(cfg, bad)


def build_mask_head(cfg, teacher: nn.Module | None = None) -> nn.Module:
    """The mask head named ``cfg.MODEL.CONDINST.MASK_HEAD.NAME``; ``teacher`` (a frozen model
    whose masks are the head's targets) goes to ``from_config(cfg, teacher=teacher)`` of a
    head that takes one."""
    name = cfg.MODEL.CONDINST.MASK_HEAD.NAME
    if name not in MASK_HEAD_REGISTRY:
        raise ValueError(
            f"MODEL.CONDINST.MASK_HEAD.NAME = {name!r} is not registered; registered: "
            f"{sorted(k for k, _ in MASK_HEAD_REGISTRY)}"
        )
    head_cls = MASK_HEAD_REGISTRY.get(name)
    if teacher is None:
        return head_cls(**head_cls.from_config(cfg))
    return head_cls(**head_cls.from_config(cfg, teacher=teacher))


def parse_dynamic_params(
    params: torch.Tensor, channels: int, weight_nums: list[int], bias_nums: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Splits (n, num_gen_params) into per-instance 1x1-conv weights and biases, AdelaiDet's
    layout: all weights first (layer by layer), then all biases. Layer ``l`` weight of instance
    ``k`` is ``params[k, off_l : off_l + out*in].reshape(out, in)`` (row-major, out-major).

    Returns per layer weights (n, out_l, in_l) and biases (n, out_l, 1), the operands of a
    batched matrix product with (n, in_l, pixels) inputs.
    """
    num_insts = params.size(0)
    num_layers = len(weight_nums)
    splits = list(torch.split_with_sizes(params, weight_nums + bias_nums, dim=1))
    weights, biases = splits[:num_layers], splits[num_layers:]
    for layer in range(num_layers):
        out = channels if layer < num_layers - 1 else 1
        weights[layer] = weights[layer].reshape(num_insts, out, weight_nums[layer] // out)
        biases[layer] = biases[layer].reshape(num_insts, out, 1)
    return weights, biases


@MASK_HEAD_REGISTRY.register()
class DynamicMaskHead(nn.Module):
    """No parameters; buffers ``sizes_of_interest`` int64 (L+1,) and ``_iter`` float32 (1,)
    (AdelaiDet's; ``_iter`` counts training calls).

    Per instance: input = [rel. x, rel. y] + ``mask_feats`` of its image (in_channels + 2
    channels at the stride of ``mask_feats``), then ``num_layers`` 1x1 convs (ReLU between)
    with ``channels`` hidden channels and 1 output, then ``aligned_bilinear`` to
    ``mask_out_stride``. Relative coordinates are ``(location of the instance - location of
    the pixel) / sizes_of_interest[fpn_level]``.

    With ``boxinst`` (``MODEL.BOXINST.ENABLED``), BoxInst's projection and pairwise losses
    replace the dice loss (:mod:`.boxinst_loss`); inference is the same.
    """

    def __init__(
        self,
        *,
        in_channels: int = 8,
        channels: int = 8,
        num_layers: int = 3,
        mask_out_stride: int = 4,
        disable_rel_coords: bool = False,
        sizes_of_interest: list[int] = (64, 128, 256, 512),
        boxinst: BoxInstLosses | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_layers = num_layers
        self.mask_out_stride = mask_out_stride
        self.disable_rel_coords = disable_rel_coords
        soi = list(sizes_of_interest)
        self.register_buffer("sizes_of_interest", torch.tensor(soi + [soi[-1] * 2]))
        self.register_buffer("_iter", torch.zeros([1]))
        self.boxinst = boxinst

        first_in = in_channels if disable_rel_coords else in_channels + 2
        weight_nums, bias_nums = [], []
        for layer in range(num_layers):
            n_in = first_in if layer == 0 else channels
            n_out = 1 if layer == num_layers - 1 else channels
            weight_nums.append(n_in * n_out)
            bias_nums.append(n_out)
        self.weight_nums = weight_nums
        self.bias_nums = bias_nums
        self.num_gen_params = sum(weight_nums) + sum(bias_nums)

    @classmethod
    def check_cfg(cls, cfg, bad: Report) -> None:
        """The checks of ``MODEL.CONDINST.MASK_HEAD`` (see ``collect_problems``); a subclass
        with keys of its own extends it (calling ``super().check_cfg``)."""
        mh = cfg.MODEL.CONDINST.MASK_HEAD
        check_choice(
            cfg, bad, "MODEL.CONDINST.MASK_HEAD.USE_FP16", (False,),
            "AdelaiDet ignores it; use SOLVER.AMP",
        )
        if mh.NUM_LAYERS < 1 or mh.CHANNELS < 1:
            bad("MODEL.CONDINST.MASK_HEAD.NUM_LAYERS", "NUM_LAYERS and CHANNELS must be positive")

    @classmethod
    def from_config(cls, cfg) -> dict:
        ci = cfg.MODEL.CONDINST
        return dict(
            in_channels=ci.MASK_BRANCH.OUT_CHANNELS,
            channels=ci.MASK_HEAD.CHANNELS,
            num_layers=ci.MASK_HEAD.NUM_LAYERS,
            mask_out_stride=ci.MASK_OUT_STRIDE,
            disable_rel_coords=ci.MASK_HEAD.DISABLE_REL_COORDS,
            sizes_of_interest=list(cfg.MODEL.FCOS.SIZES_OF_INTEREST),
            boxinst=(
                BoxInstLosses(**BoxInstLosses.from_config(cfg))
                if cfg.MODEL.BOXINST.ENABLED
                else None
            ),
        )

    def mask_logits(
        self, mask_feats: torch.Tensor, mask_feat_stride: int, instances: Instances
    ) -> torch.Tensor:
        """Mask logits of every instance over the whole padded batch canvas.

        Args:
            mask_feats: (N, in_channels, Hm, Wm), the mask branch output (any float dtype).
            mask_feat_stride: its stride (8).
            instances: n instances with ``locations`` float (n, 2) (x, y) in input pixels of the
                FCOS location that produced each, ``im_inds`` int64 (n,) index into the batch,
                ``fpn_levels`` int64 (n,) and ``mask_head_params`` (n, num_gen_params).

        Returns:
            (n, 1, Hm * s, Wm * s) logits in ``mask_feats``' dtype, ``s = mask_feat_stride /
            mask_out_stride`` (i.e. (n, 1, Hp/4, Wp/4)). For n == 0, an empty tensor that is
            still attached to ``mask_feats`` and the params in the autograd graph.
        """
        if mask_feat_stride % self.mask_out_stride:
            raise ValueError(
                f"mask_feat_stride {mask_feat_stride} is not a multiple of MASK_OUT_STRIDE "
                f"{self.mask_out_stride}"
            )
        if len(instances) == 0:
            # Zero-valued but connected, so DDP sees every parameter used (AdelaiDet's dummy).
            factor = mask_feat_stride // self.mask_out_stride
            _, _, h, w = mask_feats.shape
            connected = mask_feats.sum() * 0 + instances.mask_head_params.sum() * 0
            return mask_feats.new_zeros((0, 1, h * factor, w * factor)) + connected
        return self.dynamic_logits(
            mask_feats, mask_feat_stride, instances.locations, instances.im_inds,
            instances.fpn_levels, instances.mask_head_params,
        )

    def dynamic_logits(
        self,
        mask_feats: torch.Tensor,
        mask_feat_stride: int,
        locations: torch.Tensor,
        im_inds: torch.Tensor,
        fpn_levels: torch.Tensor,
        params: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`mask_logits` on the instances' fields, without its n == 0 case (nor the
        stride check), so that it also traces for an n known only when the graph runs
        (torch.export's unbacked sizes, ``condinst_percep.export``): the same operations,
        (n, 1, Hp/4, Wp/4)."""
        factor = mask_feat_stride // self.mask_out_stride
        n = params.shape[0]
        _, _, h, w = mask_feats.shape
        inputs = mask_feats[im_inds].reshape(n, self.in_channels, h * w)
        if not self.disable_rel_coords:
            pixels = compute_locations(h, w, mask_feat_stride, mask_feats.device)
            rel = locations.reshape(-1, 1, 2) - pixels.reshape(1, -1, 2)
            rel = rel.permute(0, 2, 1).float()
            soi = self.sizes_of_interest.float()[fpn_levels]
            rel = (rel / soi.reshape(-1, 1, 1)).to(dtype=mask_feats.dtype)
            inputs = torch.cat([rel, inputs], dim=1)
        weights, biases = parse_dynamic_params(
            params, self.channels, self.weight_nums, self.bias_nums
        )
        # AdelaiDet's grouped 1x1 convolution (groups=n) as one batched matrix product: the
        # same sums, half the time on the CPU, whose grouped convolution loops over the groups.
        x = inputs
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            x = torch.baddbmm(bias, weight, x)
            if layer < self.num_layers - 1:
                x = F.relu(x)
        return aligned_bilinear(x.reshape(n, 1, h, w), factor)

    @staticmethod
    def matched_gt_bitmasks(instances: Instances, gt_instances: list[Instances]) -> torch.Tensor:
        """(n, 1, Hp/4, Wp/4) float32: the ``gt_bitmasks`` of each instance's GT (``gt_inds``
        indexes the batch's concatenated GTs)."""
        gt_bitmasks = torch.cat([g.gt_bitmasks for g in gt_instances])
        return gt_bitmasks[instances.gt_inds].unsqueeze(1).float()

    def losses(
        self,
        mask_logits: torch.Tensor,
        instances: Instances,
        gt_instances: list[Instances],
        images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss_mask": mean dice loss}`` over the n instances (float32); with BoxInst
        (``boxinst``), its ``{"loss_prj", "loss_pairwise"}`` from box targets instead.

        Args:
            mask_logits: (n, 1, Hp/4, Wp/4) from :meth:`mask_logits`.
            instances: the sampled positive locations (FCOS fields plus ``mask_head_params``;
                ``gt_inds`` is used here).
            gt_instances: per image, with ``gt_bitmasks`` (G, Hp/4, Wp/4) float32 and the
                fields the meta-architecture adds (``gt_boxes``, ``gt_centroids``, ...).
            images: (N, 3, Hp, Wp) float32, the normalised padded batch the backbone saw, for
                a subclass whose loss looks at the images (a teacher run on them); unused here.

        Subclasses override this method (not ``forward``) and add their own terms; for n == 0
        every term must stay connected to the graph (e.g. ``mask_logits.sum() * 0``, which is
        what ``loss_mask`` does).
        """
        if self.boxinst is not None:
            return self.boxinst(mask_logits, instances, gt_instances, self._iter)
        if len(instances) == 0:
            return {"loss_mask": mask_logits.sum().float() * 0}
        mask_scores = mask_logits.float().sigmoid()
        gt = self.matched_gt_bitmasks(instances, gt_instances)
        return {"loss_mask": dice_coefficient(mask_scores, gt).mean()}

    def forward(
        self,
        mask_feats: torch.Tensor,
        mask_feat_stride: int,
        pred_instances: Instances,
        gt_instances: list[Instances] | None = None,
        images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | Instances:
        """Training: the loss dict of :meth:`losses` on the logits of ``pred_instances``
        (``gt_instances`` and ``images`` are passed on to it). Inference: ``pred_instances``
        with ``pred_global_masks`` = sigmoid of the logits, (n, 1, Hp/4, Wp/4)."""
        if self.training:
            self._iter += 1
            logits = self.mask_logits(mask_feats, mask_feat_stride, pred_instances)
            return self.losses(logits, pred_instances, gt_instances, images)
        pred_instances.pred_global_masks = self.mask_logits(
            mask_feats, mask_feat_stride, pred_instances
        ).sigmoid()
        return pred_instances
