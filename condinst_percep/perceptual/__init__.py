"""The generic perceptual loss (Liu et al., CVPR 2021), usable on any dense output."""
from .loss import PerceptualLoss
from .random_net import RandomPerceptualNet

__all__ = ["RandomPerceptualNet", "PerceptualLoss"]
