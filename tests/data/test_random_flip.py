"""INPUT.RANDOM_FLIP "vertical": accepted by validate_cfg, mirrors rows in the mapper, trains."""

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from condinst_percep.config import UnsupportedConfigError
from condinst_percep.data import BoxMode, DatasetMapper
from condinst_percep.data.transforms import RandomFlip
from condinst_percep.engine import Trainer, validate_cfg
from condinst_percep.utils.events import EventStorage
from tests.conftest import tiny_cfg
from tests.percep_helpers import STUDENT

H, W = 48, 64


@pytest.fixture
def record(tmp_path):
    """A 48x64 image holding one object, an L shape given as RLE (so it flips exactly)."""
    image = np.random.default_rng(1).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = str(tmp_path / "l_shape.png")
    cv2.imwrite(path, image)
    mask = np.zeros((H, W), np.uint8)
    mask[5:30, 10:18] = 1
    mask[22:30, 10:40] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    ann = {"id": 1, "bbox": [10.0, 5.0, 30.0, 25.0], "bbox_mode": BoxMode.XYWH_ABS,
           "category_id": 0, "iscrowd": 0,
           "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
    return {"file_name": path, "height": H, "width": W, "image_id": 3, "annotations": [ann]}


def _flip_cfg(value):
    # Images keep their size (short edge H); 64 FPN channels: two per GN group on 1x1 maps.
    return tiny_cfg(**{**STUDENT, "INPUT.RANDOM_FLIP": value, "INPUT.MIN_SIZE_TRAIN": (H,),
                       "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice", "INPUT.MAX_SIZE_TRAIN": 1000,
                       "MODEL.FPN.OUT_CHANNELS": 64})


def test_vertical_flip_is_accepted_and_other_values_refused_by_key():
    for value in ("vertical", "horizontal", "none"):
        validate_cfg(_flip_cfg(value))
    message = r"INPUT.RANDOM_FLIP = 'diagonal': .*'vertical'"
    with pytest.raises(UnsupportedConfigError, match=message):
        validate_cfg(_flip_cfg("diagonal"))


def test_config_mapper_flips_rows_of_image_mask_and_box(record):
    mapper = DatasetMapper.build(_flip_cfg("vertical"), is_train=True)
    flips = [a for a in mapper.augmentations if isinstance(a, RandomFlip)]
    assert len(flips) == 1 and not flips[0].horizontal and flips[0].prob == 0.5
    plain = DatasetMapper(True, [])(record)
    image, mask = plain["image"], plain["instances"].gt_masks
    x1, y1, x2, y2 = plain["instances"].gt_boxes.unbind(1)
    mirrored_box = torch.stack([x1, H - y2, x2, H - y1], dim=1)
    outcomes = set()
    for seed in range(16):
        out = mapper(record, np.random.default_rng(seed))
        flipped = torch.equal(out["image"], image.flip(1))  # (3, H, W): rows reversed
        assert flipped or torch.equal(out["image"], image)
        inst = out["instances"]
        assert torch.equal(inst.gt_masks, mask.flip(1) if flipped else mask)
        expected_box = mirrored_box if flipped else plain["instances"].gt_boxes
        torch.testing.assert_close(inst.gt_boxes, expected_box)
        outcomes.add(flipped)
    assert outcomes == {True, False}
    # The mirrored box is the mirrored mask's tight box: x kept, y measured from the bottom.
    ys, xs = np.nonzero(mask[0].flip(0).numpy())
    assert mirrored_box[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_trainer_takes_a_step_on_vertically_flipped_batches(record, tmp_path):
    cfg = _flip_cfg("vertical")
    cfg.OUTPUT_DIR = str(tmp_path)
    mapper = DatasetMapper.build(cfg, is_train=True)
    batch = [mapper(record, np.random.default_rng(seed)) for seed in (0, 1)]
    trainer = Trainer(cfg)
    trainer.data_loader = [batch]
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with EventStorage(0) as storage:
        trainer.run_step()
    assert all(np.isfinite(storage.latest()[k][0]) for k in ("loss_mask", "total_loss"))
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
