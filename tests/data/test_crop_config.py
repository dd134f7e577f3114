"""INPUT.CROP in the config: each TYPE validates and builds AdelaiDet's augmentation list (crop,
resize, flip; training only; boxes recomputed except for BoxInst), bad TYPE/SIZE values are
refused by key, and a training step runs on batches of the crop's size."""

import numpy as np
import pytest
import torch

from condinst_percep.config import UnsupportedConfigError
from condinst_percep.data import DatasetMapper, build_detection_train_loader, generate_shapes
from condinst_percep.data.crop import RandomCropWithInstance
from condinst_percep.data.transforms import RandomFlip, ResizeShortestEdge
from condinst_percep.engine import Trainer, validate_cfg
from condinst_percep.utils.events import EventStorage
from tests.conftest import tiny_cfg


def _crop_cfg(**crop):
    return tiny_cfg(**{"INPUT.CROP.ENABLED": True, **{f"INPUT.CROP.{k}": v for k, v in crop.items()}})


@pytest.mark.parametrize(
    "crop_type, size", [("relative_range", [0.9, 0.9]), ("relative", [0.5, 1.0]), ("absolute", [320, 480]),
                        ("absolute_range", [384, 600])],
)
def test_each_crop_type_validates_and_builds_the_augmentation_list(crop_type, size):
    cfg = _crop_cfg(TYPE=crop_type, SIZE=size, CROP_INSTANCE=False)
    validate_cfg(cfg)
    mapper = DatasetMapper.build(cfg, is_train=True)
    crop, resize, flip = mapper.augmentations  # AdelaiDet's order: crop, resize, flip
    assert isinstance(crop, RandomCropWithInstance) and isinstance(resize, ResizeShortestEdge)
    assert isinstance(flip, RandomFlip)
    assert (crop.crop_type, crop.crop_size, crop.crop_instance) == (crop_type, tuple(size), False)
    assert mapper.recompute_boxes and mapper.mask_format == "polygon"
    test_mapper = DatasetMapper.build(cfg, is_train=False)
    assert not test_mapper.recompute_boxes and not any(
        isinstance(a, RandomCropWithInstance) for a in test_mapper.augmentations)
    cfg.MODEL.BOXINST.ENABLED = True
    assert not DatasetMapper.build(cfg, is_train=True).recompute_boxes  # BoxInst: record boxes


@pytest.mark.parametrize(
    "crop, key, reason",
    [
        ({"TYPE": "square"}, "INPUT.CROP.TYPE", "supported: 'relative_range'"),
        ({"TYPE": "relative", "SIZE": [0.0, 0.5]}, "INPUT.CROP.SIZE", r"in \(0, 1\]"),
        ({"TYPE": "relative_range", "SIZE": [0.5, 1.5]}, "INPUT.CROP.SIZE", r"in \(0, 1\]"),
        ({"TYPE": "absolute", "SIZE": [0.5, 0.5]}, "INPUT.CROP.SIZE", "whole pixels"),
        ({"TYPE": "absolute_range", "SIZE": [600, 384]}, "INPUT.CROP.SIZE", "min <= max"),
        ({"TYPE": "absolute", "SIZE": [320]}, "INPUT.CROP.SIZE", "two numbers"),
    ],
)
def test_bad_crop_values_are_refused_by_key(crop, key, reason):
    with pytest.raises(UnsupportedConfigError, match=rf"{key} = .*: .*{reason}") as e:
        validate_cfg(_crop_cfg(**crop))
    assert [p.split(" = ")[0] for p in e.value.problems] == [key]


def test_trainer_steps_on_cropped_batches(tmp_path):
    """The loader's batches, as the model receives them, have the crop's size: a 40x48
    'absolute' window with MIN_SIZE_TRAIN 40 (the resize is the identity) out of 64-80 px
    images; their masks and boxes are at that size; one optimiser step runs."""
    json_file = generate_shapes(str(tmp_path / "shapes"), num_images=4, min_size=64, max_size=80, seed=0, max_objects=3)
    cfg = tiny_cfg(**{
        "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": [40, 48],
        "INPUT.MIN_SIZE_TRAIN": (40,), "INPUT.MAX_SIZE_TRAIN": 1000, "MODEL.FCOS.NUM_CLASSES": 4,
        "DATASETS.TRAIN": (f"coco:{json_file}:{tmp_path / 'shapes' / 'images'}",),
        "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2, "OUTPUT_DIR": str(tmp_path / "out"),
    })
    trainer = Trainer(cfg)
    trainer.data_loader = build_detection_train_loader(cfg)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with EventStorage(0) as storage:
        trainer.run_step()
    (batch,) = seen
    assert len(batch) == 2
    for x in batch:
        assert tuple(x["image"].shape) == (3, 40, 48) and (x["height"], x["width"]) != (40, 48)
        inst = x["instances"]
        assert inst.image_size == (40, 48) and tuple(inst.gt_masks.shape[1:]) == (40, 48)
        assert (inst.gt_boxes[:, 2:] <= torch.tensor([48.0, 40.0])).all()
    assert np.isfinite(storage.latest()["total_loss"][0])
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
