"""CondInst instance segmentation with the generic perceptual loss (Liu et al., CVPR 2021)."""

__version__ = "0.1.0"
