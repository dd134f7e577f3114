"""A small random loss network and soft masks for the PerceptualLoss tests."""
import torch

from condinst_percep.perceptual import RandomPerceptualNet

STRUCTURE, WIDTHS = (1, 2, 1), (8, 12, 16)


def small_net(in_channels=1, **kwargs):
    return RandomPerceptualNet(in_channels, structure=STRUCTURE, widths=WIDTHS, seed=11, **kwargs)


def soft_masks(n, size, seed, channels=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.sigmoid(4 * torch.randn(n, channels, *size, generator=gen))


def assert_close_rel(a, b, rel=3e-6):
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item())
