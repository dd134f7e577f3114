"""tools/export_model.py (ONNX and torch.export) and ExportedPredictor against the eager
Predictor on images of several sizes (one whose coarsest levels are 1 wide), a batch, a batch of
one and an image without detections: same detections, scores within 1e-5, boxes within 1e-3
px, at most 1e-4 of the mask pixels different."""
import os

import numpy as np
import pytest
import torch

from tests.conftest import tiny_cfg as _tiny_cfg
from tests.percep_helpers import STUDENT

from condinst_percep import ExportedPredictor, Predictor
from condinst_percep.modeling import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"INPUT.MIN_SIZE_TEST": 136, "INPUT.MAX_SIZE_TEST": 200}


def tiny_cfg(**overrides):
    """The perceptual tests' student (3 classes, every detection kept, up to 20) at small sizes."""
    return _tiny_cfg(**{**STUDENT, **overrides})


def _images():
    rng = np.random.default_rng(0)
    shapes = ((120, 160), (200, 140), (40, 300))  # the last: padded 32 x 224, P7 is 1 x 2
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    for image in images:  # objects on the noise
        image[10:60, 20:90] = (30, 200, 240)
    return images


def _blank():
    return np.full((150, 150, 3), 110, np.uint8)


def _max_class_score(model, predictor, image):
    inputs = [predictor.model_input(0, image)]
    with torch.no_grad():
        images, _ = model.preprocess_image(inputs)
        dense = model.dense_outputs(images)
    return max(float(t.sigmoid().max()) for t in dense[:-1:4])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Eager predictor and the two exported files of one random model whose class threshold
    lies between the blank image's best score and the other images' (so that it detects
    nothing in the blank image and something in the others)."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = tiny_cfg(**SIZES, **{"MODEL.FCOS.POST_NMS_TOPK_TEST": 30})
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.controller.weight, std=0.05)
    torch.nn.init.normal_(model.proposal_generator.fcos_head.cls_logits.weight, std=0.3)
    probe = Predictor(cfg)
    blank = _max_class_score(model, probe, _blank())
    others = min(_max_class_score(model, probe, im) for im in _images())
    assert blank < others
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = blank + (others - blank) / 5
    weights = folder / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = folder / "config.yaml"
    config.write_text(cfg.dump())

    import importlib.util

    spec = importlib.util.spec_from_file_location("export_model", os.path.join(REPO, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    files = {
        fmt: tool.main(["--config-file", str(config), "--format", fmt, "--output", str(folder),
                        "MODEL.WEIGHTS", str(weights)])
        for fmt in ("export", "onnx")
    }
    cfg.MODEL.WEIGHTS = str(weights)
    return Predictor(cfg), files


def _assert_close(got, expected):
    assert len(got) == len(expected)
    assert got.image_size == expected.image_size
    assert torch.equal(got.pred_classes, expected.pred_classes)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=1e-3)
    assert got.pred_masks.shape == expected.pred_masks.shape
    if len(got):
        assert (got.pred_masks != expected.pred_masks).float().mean() <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "export"])
def test_exported_equals_eager(exported, fmt):
    eager, files = exported
    predictor = ExportedPredictor(files[fmt])
    images = _images()
    for i, image in enumerate(images):
        expected = eager(image)
        # (the narrow image's random-weight boxes are empty after clipping: none is left)
        assert len(expected) > 0 or i == 2
        _assert_close(predictor(image), expected)  # a batch of one
    # one batch of several sizes, padded together
    for got, expected in zip(predictor(images + [_blank()]), eager(images + [_blank()])):
        _assert_close(got, expected)
    # no detection: empty fields of the right shapes
    nothing = predictor(_blank())
    assert len(eager(_blank())) == len(nothing) == 0
    assert nothing.pred_masks.shape == (0, 150, 150) and nothing.pred_boxes.shape == (0, 4)


def test_exported_files_are_checked(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="no exported model"):
        ExportedPredictor(str(tmp_path / "missing.onnx"))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="neither .onnx nor .pt2"):
        ExportedPredictor(str(other))
