"""``Predictor``: a trained CondInst from Python, detectron2's ``DefaultPredictor`` shape.

    predictor = Predictor(cfg)                 # cfg.MODEL.WEIGHTS: the checkpoint
    instances = predictor(image)               # (H, W, 3) uint8 in cfg.INPUT.FORMAT
    per_image = predictor([image1, image2])    # one batch, images of any sizes

Each image is resized as at test time (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``),
and the ``Instances`` come back at the image's own size: ``pred_boxes`` float32 (K, 4) XYXY,
``scores`` float32 (K,), ``pred_classes`` int64 (K,), ``pred_masks`` bool (K, H, W), on
``MODEL.DEVICE``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import CfgNode
from ..data.dataset_mapper import build_augmentation
from ..data.transforms import apply_augmentations
from ..structures import Instances

__all__ = ["BasePredictor", "Predictor", "inference_cfg"]


def inference_cfg(cfg: CfgNode) -> CfgNode:
    """A frozen copy of ``cfg`` for inference: the perceptual head becomes the plain
    ``DynamicMaskHead``. ``PercepMaskHead`` only adds a loss (its parameters, buffers and
    inference are the dynamic head's), so nothing changes in the outputs, and its loss network
    and teacher, training targets only, are never built."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.CONDINST.MASK_HEAD.NAME == "PercepMaskHead":
        cfg.MODEL.CONDINST.MASK_HEAD.NAME = "DynamicMaskHead"
        cfg.MODEL.PERCEP.ENABLED = False
    cfg.freeze()
    return cfg


class BasePredictor:
    """Image checks and the test-time resize shared by :class:`Predictor` and
    ``ExportedPredictor``; subclasses implement :meth:`run` on the model's input dicts."""

    def __init__(self, cfg: CfgNode):
        self.cfg = inference_cfg(cfg)
        self.input_format = self.cfg.INPUT.FORMAT
        self.augmentations = build_augmentation(self.cfg, is_train=False)

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> Instances | list[Instances]:
        """One (H, W, 3) uint8 image -> its ``Instances``; a list of them -> a list, run as
        one batch."""
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("Predictor got an empty list of images")
        inputs = [self.model_input(i, image) for i, image in enumerate(batch)]
        with torch.inference_mode():
            results = self.run(inputs)
        return results[0] if single else results

    def model_input(self, index: int, image: np.ndarray) -> dict:
        """The model's input dict for one image: resized, (3, h, w) uint8, output size (H, W)."""
        if (
            not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            what = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
                    else type(image).__name__)
            raise ValueError(
                f"image {index}: expected an (H, W, 3) uint8 array in {self.input_format} order "
                f"(INPUT.FORMAT), got {what}"
            )
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image {index} is empty: shape {image.shape}")
        height, width = image.shape[:2]
        # The test-time resize is deterministic; the generator only satisfies the interface.
        resized, _ = apply_augmentations(self.augmentations, image, np.random.default_rng(0))
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def run(self, inputs: list[dict]) -> list[Instances]:
        raise NotImplementedError


class Predictor(BasePredictor):
    """The eager model of ``cfg`` (``MODEL.WEIGHTS`` loaded when set) in eval mode on
    ``MODEL.DEVICE``; see the module docstring for the call."""

    def __init__(self, cfg: CfgNode):
        from ..checkpoint import Checkpointer
        from ..modeling import build_model

        super().__init__(cfg)
        self.model = build_model(self.cfg).eval()
        if self.cfg.MODEL.WEIGHTS:
            Checkpointer(self.model).load(self.cfg.MODEL.WEIGHTS)

    def run(self, inputs: list[dict]) -> list[Instances]:
        return [out["instances"] for out in self.model(inputs)]
