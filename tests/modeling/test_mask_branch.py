"""MaskBranch: the fusion of FPN levels against aligned_bilinear by hand, and misaligned inputs."""
import pytest
import torch

from condinst_percep.layers import aligned_bilinear
from condinst_percep.modeling.condinst import MaskBranch


def test_mask_branch_fuses_levels_and_refuses_unaligned_features():
    branch = MaskBranch(in_features=["p3", "p4", "p5"], in_channels=[4, 4, 4], in_strides=[8, 16, 32],
                        channels=32, out_channels=8, num_convs=1).eval()
    feats = {"p3": torch.randn(1, 4, 8, 8), "p4": torch.randn(1, 4, 4, 4), "p5": torch.randn(1, 4, 2, 2)}
    with torch.no_grad():
        x = branch.refine[0](feats["p3"]) + aligned_bilinear(branch.refine[1](feats["p4"]), 2)
        x = x + aligned_bilinear(branch.refine[2](feats["p5"]), 4)
        torch.testing.assert_close(branch(feats), branch.tower(x))
    assert branch.out_stride == 8 and branch.tower[1].out_channels == 8
    feats["p4"] = torch.randn(1, 4, 4, 3)
    with pytest.raises(ValueError, match="p4"):
        branch(feats)
