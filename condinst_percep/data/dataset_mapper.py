"""Dataset dict -> model input: decode, augment, and turn annotations into ``Instances``."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ..config.validate import Report, check_choice
from .crop import CROP_TYPES, RandomCropWithInstance, crop_size_problem
from .detection_utils import (
    SUPPORTED_IMAGE_FORMATS,
    annotation_box,
    annotations_to_instances,
    check_image_size,
    is_nonempty,
    read_image,
    transform_instance_annotation,
)
from .transforms import (
    SAMPLE_STYLES,
    Augmentation,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)

RANDOM_FLIPS = ("horizontal", "vertical", "none")
# detectron2's values; the annotations' own format (polygons or RLE) decides how they are read.
MASK_FORMATS = ("polygon", "bitmask")


def check_input_cfg(cfg, bad: Report) -> None:
    """The checks of the ``INPUT`` keys the mapper and its augmentations read (see
    ``collect_problems``)."""
    i = cfg.INPUT
    check_choice(cfg, bad, "INPUT.FORMAT", SUPPORTED_IMAGE_FORMATS)
    check_choice(cfg, bad, "INPUT.MASK_FORMAT", MASK_FORMATS)
    check_choice(cfg, bad, "INPUT.MIN_SIZE_TRAIN_SAMPLING", SAMPLE_STYLES)
    check_choice(cfg, bad, "INPUT.RANDOM_FLIP", RANDOM_FLIPS)
    check_choice(cfg, bad, "INPUT.CROP.TYPE", CROP_TYPES)
    if i.CROP.TYPE in CROP_TYPES and (problem := crop_size_problem(i.CROP.TYPE, i.CROP.SIZE)):
        bad("INPUT.CROP.SIZE", problem)
    if i.IS_ROTATE:
        bad("INPUT.IS_ROTATE", "rotation augmentation is not implemented")
    sizes = list(i.MIN_SIZE_TRAIN)
    if not sizes or min(sizes) <= 0:
        bad("INPUT.MIN_SIZE_TRAIN", "needs at least one positive size")
    if i.MIN_SIZE_TRAIN_SAMPLING == "range" and (len(sizes) != 2 or sizes[0] > sizes[1]):
        bad("INPUT.MIN_SIZE_TRAIN", "sampling 'range' needs exactly (low, high)")
    for key in ("MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        if i[key] <= 0:
            bad(f"INPUT.{key}", "must be positive")


def build_augmentation(cfg, is_train: bool) -> list[Augmentation]:
    """AdelaiDet's list: in training with ``INPUT.CROP.ENABLED`` its instance-aware crop first,
    then ``ResizeShortestEdge``, then, in training, a random flip.

    The flip is on when ``INPUT.HFLIP_TRAIN`` (AdelaiDet) is true and ``INPUT.RANDOM_FLIP``
    (detectron2) is not ``"none"``; ``RANDOM_FLIP`` chooses horizontal or vertical. The keys are
    checked by :func:`check_input_cfg`.
    """
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    augmentations: list[Augmentation] = [ResizeShortestEdge(min_size, max_size, sample_style)]
    if is_train and cfg.INPUT.CROP.ENABLED:
        crop = cfg.INPUT.CROP
        augmentations.insert(0, RandomCropWithInstance(crop.TYPE, crop.SIZE, crop.CROP_INSTANCE))
    if is_train:
        random_flip = cfg.INPUT.RANDOM_FLIP
        if cfg.INPUT.HFLIP_TRAIN and random_flip != "none":
            augmentations.append(RandomFlip(0.5, horizontal=random_flip == "horizontal"))
    return augmentations


class DatasetMapper:
    """Maps one dataset dict to the model's input dict.

    Output: ``{"image": uint8 (3, H, W) in image_format, "height", "width": original size,
    "file_name", "image_id", "instances": Instances((H, W), gt_boxes float32 (N, 4) XYXY,
    gt_classes int64 (N,), gt_masks bool (N, H, W))}``; ``instances`` only when training.
    Crowd annotations are dropped and empty instances filtered, as AdelaiDet does (the
    augmentations see every annotation's box, crowd ones too, as AdelaiDet's crop does).
    ``use_masks=False`` (BoxInst, ``MODEL.BOXINST.ENABLED``) ignores segmentations, as
    AdelaiDet's mapper does: annotations need only a box, and ``instances`` has no gt_masks.
    ``recompute_boxes`` takes the boxes from the masks, by ``mask_format``'s rule (see
    :func:`transform_instance_annotation`); detectron2 does it in training with the crop on.
    """

    def __init__(
        self,
        is_train: bool,
        augmentations: Sequence[Augmentation],
        image_format: str = "BGR",
        use_masks: bool = True,
        recompute_boxes: bool = False,
        mask_format: str = "polygon",
    ) -> None:
        if recompute_boxes and not use_masks:
            raise ValueError("recompute_boxes takes the boxes from the masks: it needs use_masks")
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.use_masks = use_masks
        self.recompute_boxes = recompute_boxes
        self.mask_format = mask_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        use_masks = not cfg.MODEL.BOXINST.ENABLED
        return {
            "is_train": is_train,
            "augmentations": build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "use_masks": use_masks,
            "recompute_boxes": is_train and cfg.INPUT.CROP.ENABLED and use_masks,
            "mask_format": cfg.INPUT.MASK_FORMAT,
        }

    @classmethod
    def build(cls, cfg, is_train: bool = True) -> DatasetMapper:
        return cls(**cls.from_config(cfg, is_train))

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict:
        """``rng`` drives the random augmentations; a fresh unseeded one is used when omitted."""
        if rng is None:
            rng = np.random.default_rng()
        record = copy.copy(dataset_dict)
        image = read_image(record["file_name"], self.image_format)
        check_image_size(record, image)
        record_size = image.shape[:2]
        annotations = record.get("annotations", []) if self.is_train else []
        boxes = np.array([annotation_box(a) for a in annotations]).reshape(-1, 4)
        image, transforms = apply_augmentations(self.augmentations, image, rng, boxes)
        image_size = image.shape[:2]
        out = {
            "file_name": record["file_name"],
            "image_id": record.get("image_id"),
            "height": record.get("height", record_size[0]),
            "width": record.get("width", record_size[1]),
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        }
        if self.is_train and "annotations" in record:
            annos = [
                transform_instance_annotation(
                    obj, transforms, image_size, record_size, self.use_masks,
                    self.recompute_boxes, self.mask_format,
                )
                for obj in annotations
                if obj.get("iscrowd", 0) == 0
            ]
            annos = [a for a in annos if is_nonempty(a)]
            out["instances"] = annotations_to_instances(annos, image_size, self.use_masks)
        return out
