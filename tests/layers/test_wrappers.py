"""The Conv2d wrapper (norm and activation children) and detectron2's Caffe2 weight fills."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from condinst_percep.layers import Conv2d, FrozenBatchNorm2d, c2_msra_fill, c2_xavier_fill


def test_conv2d_wrapper_children():
    conv = Conv2d(3, 4, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(4), activation=F.relu)
    norm_keys = ["norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"]
    assert list(conv.state_dict()) == ["weight"] + norm_keys
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(conv(x), F.relu(F.conv2d(x, conv.weight, padding=1)))


def test_c2_fills_on_small_layers():
    conv = nn.Conv2d(4, 6, 3)
    c2_xavier_fill(conv)
    assert conv.weight.abs().max() <= math.sqrt(3 / 36) and torch.all(conv.bias == 0)
    c2_msra_fill(conv)
    assert torch.all(conv.bias == 0)
