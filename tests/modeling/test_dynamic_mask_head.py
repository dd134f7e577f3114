"""DynamicMaskHead: the generated convs against a per-instance loop, and the dice loss."""
import torch

from condinst_percep.modeling.condinst import DynamicMaskHead
from condinst_percep.structures import Instances
from tests.modeling.references import naive_mask_logits


def test_dynamic_head_matches_naive_per_instance_loop():
    head = DynamicMaskHead()
    assert head.num_gen_params == 169
    assert (head.weight_nums, head.bias_nums) == ([80, 64, 8], [8, 8, 1])
    torch.manual_seed(0)
    mask_feats = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    inst = Instances(
        (0, 0),
        locations=torch.tensor([[12.0, 20.0], [40.0, 8.0], [100.0, 60.0]], dtype=torch.float64),
        im_inds=torch.tensor([0, 1, 1]),
        fpn_levels=torch.tensor([0, 2, 4]),
        mask_head_params=torch.randn(3, 169, dtype=torch.float64),
    )
    got = head.mask_logits(mask_feats, 8, inst)
    assert got.shape == (3, 1, 12, 14)
    expected = naive_mask_logits(inst.mask_head_params, inst.locations, inst.im_inds, inst.fpn_levels,
                                 mask_feats, 8)
    torch.testing.assert_close(got, expected)


def test_mask_loss_is_dice_mean_and_zero_but_connected_without_instances():
    head = DynamicMaskHead().train()
    mask_feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    params = torch.randn(2, 169, requires_grad=True)
    inst = Instances((0, 0), locations=torch.tensor([[4.0, 4.0], [20.0, 12.0]]), im_inds=torch.tensor([0, 0]),
                     fpn_levels=torch.tensor([0, 1]), mask_head_params=params, gt_inds=torch.tensor([1, 0]))
    gt = Instances((32, 32), gt_bitmasks=(torch.rand(2, 8, 8) > 0.5).float())
    loss = head(mask_feats, 8, inst, [gt])["loss_mask"]
    probs = head.mask_logits(mask_feats, 8, inst).sigmoid()
    target = gt.gt_bitmasks[[1, 0]][:, None]
    dice = 1 - 2 * (probs * target).sum((1, 2, 3)) / ((probs**2).sum((1, 2, 3)) + (target**2).sum((1, 2, 3)) + 1e-5)
    torch.testing.assert_close(loss, dice.mean())
    empty = head(mask_feats, 8, inst[:0], [gt])["loss_mask"]
    assert empty.item() == 0
    empty.backward()
    assert mask_feats.grad is not None and params.grad is not None
