"""Predictor against the model run directly on the same, independently resized inputs; the list
call; the output size; a perceptual config's Predictor holds neither loss network nor teacher."""
import gc

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import tiny_cfg as _tiny_cfg
from tests.percep_helpers import STUDENT, tiny_percep_cfg, write_teacher

from condinst_percep import Predictor
from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst import CondInst
from condinst_percep.modeling.condinst.dynamic_mask_head import DynamicMaskHead
from condinst_percep.perceptual import PerceptualLoss

SIZES = {"INPUT.MIN_SIZE_TEST": 136, "INPUT.MAX_SIZE_TEST": 200}


def tiny_cfg(**overrides):
    """The perceptual tests' student (3 classes, every detection kept, up to 20) at small sizes."""
    return _tiny_cfg(**{**STUDENT, **overrides})


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 80), (120, 70))]


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**SIZES))
    torch.nn.init.normal_(model.controller.weight, std=0.05)  # masks that are not uniform
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path), model.eval()


def _direct_input(image):
    """The test-time resize by hand: shorter side 136, longer side at most 200."""
    h, w = image.shape[:2]
    scale = min(136 / min(h, w), 200 / max(h, w))
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    interp = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return {"image": torch.from_numpy(resized.transpose(2, 0, 1).copy()), "height": h, "width": w}


def _assert_equal(a, b):
    assert len(a) == len(b) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        assert torch.equal(a.get(field), b.get(field)), field


def test_predictor_equals_the_model_on_the_same_inputs(weights):
    path, model = weights
    predictor = Predictor(tiny_cfg(**SIZES, **{"MODEL.WEIGHTS": path}))
    assert predictor.model.device == torch.device("cpu")
    images = _images()
    with torch.no_grad():
        direct = [model([_direct_input(im)])[0]["instances"] for im in images]
        direct_batch = [o["instances"] for o in model([_direct_input(im) for im in images])]
    for image, expected in zip(images, direct):
        got = predictor(image)
        assert got.image_size == image.shape[:2]
        assert got.pred_masks.shape[1:] == image.shape[:2]
        _assert_equal(got, expected)
    # a list is one batch (padded together), as the model run on the list
    for got, expected in zip(predictor(images), direct_batch):
        _assert_equal(got, expected)


def test_bad_images_are_refused_by_index():
    predictor = Predictor(tiny_cfg(**SIZES))
    good = _images()[0]
    with pytest.raises(ValueError, match=r"image 1: expected an \(H, W, 3\) uint8 array in BGR"):
        predictor([good, good.astype(np.float32)])
    with pytest.raises(ValueError, match="image 0"):
        predictor(good[:, :, :1])
    with pytest.raises(ValueError, match="empty list"):
        predictor([])


@pytest.mark.parametrize("target", ["gt", "teacher"])
def test_perceptual_config_builds_neither_loss_network_nor_teacher(target, tmp_path):
    teacher = write_teacher(tmp_path) if target == "teacher" else ("", "")
    cfg = tiny_percep_cfg(target, *teacher, **SIZES)
    gc.collect()
    before = sum(isinstance(o, (PerceptualLoss, CondInst)) for o in gc.get_objects())
    predictor = Predictor(cfg)
    gc.collect()
    after = sum(isinstance(o, (PerceptualLoss, CondInst)) for o in gc.get_objects())
    assert after - before == 1  # the predictor's own CondInst, nothing else
    head = predictor.model.mask_head
    assert type(head) is DynamicMaskHead
    assert "teacher" not in vars(head) and "percep_loss" not in vars(head)
    assert not any(isinstance(m, (PerceptualLoss, CondInst)) for m in predictor.model.modules()
                   if m is not predictor.model)
    # the training model of the same config does hold both
    training = build_model(cfg)
    assert isinstance(training.mask_head.percep_loss, PerceptualLoss)
    assert (training.mask_head.teacher is not None) == (target == "teacher")
    # and the inference parameters are the same
    assert training.state_dict().keys() == predictor.model.state_dict().keys()
