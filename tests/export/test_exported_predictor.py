"""tools/export_model.py (ONNX and torch.export) and ExportedPredictor against the eager
Predictor. The graph holds the whole inference (decoding, NMS, dynamic mask head, paste); on
images of several sizes (one whose coarsest levels are 1 wide), a batch of several sizes, a
batch of one and an image without detections: same number of detections, classes equal, scores
within 1e-5, boxes within 1e-3 px, at most 1e-4 of the mask pixels different. The model's
candidates overlap enough that NMS suppresses many, and the POST_NMS_TOPK_TEST cut is reached."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import load_tool, tiny_cfg as _tiny_cfg
from tests.percep_helpers import STUDENT

from condinst_percep import ExportedPredictor, Predictor
from condinst_percep.modeling import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZES = {"INPUT.MIN_SIZE_TEST": 136, "INPUT.MAX_SIZE_TEST": 200}
# Small enough that both cuts are reached on the test images.
PRE_NMS_TOPK, POST_NMS_TOPK = 10, 5


def tiny_cfg(**overrides):
    """The perceptual tests' student (3 classes) at small sizes, with small top-k cuts."""
    return _tiny_cfg(**{**STUDENT, **SIZES, "MODEL.FCOS.PRE_NMS_TOPK_TEST": PRE_NMS_TOPK,
                        "MODEL.FCOS.POST_NMS_TOPK_TEST": POST_NMS_TOPK, **overrides})


def _images():
    rng = np.random.default_rng(0)
    shapes = ((120, 160), (200, 140), (40, 300))  # the last: padded 32 x 224, P7 is 1 x 2
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    for image in images:  # objects on the noise
        image[10:60, 20:90] = (30, 200, 240)
    return images


def _blank():
    return np.full((150, 150, 3), 110, np.uint8)


def _dense(model, predictor, image):
    inputs = [predictor.model_input(0, image)]
    with torch.no_grad():
        images, sizes = model.preprocess_image(inputs)
        return model.dense_outputs(images), sizes


def _max_class_score(model, predictor, image):
    dense, _ = _dense(model, predictor, image)
    return max(float(t.sigmoid().max()) for t in dense[:-1:4])


def _decoding_counts(model, predictor, image):
    """The image's candidates per level, and its eager FCOS detections without the
    POST_NMS_TOPK cut, with NMS and without (IoU > 1 never holds: nothing suppressed)."""
    dense, sizes = _dense(model, predictor, image)
    fo = model.proposal_generator.fcos_outputs
    candidates = [int((t.sigmoid() > fo.pre_nms_thresh_test).sum()) for t in dense[:-1:4]]
    saved = fo.nms_thresh, fo.post_nms_topk_test
    counts = []
    try:
        fo.post_nms_topk_test = 10**6
        for fo.nms_thresh in (saved[0], 1.0):
            with torch.no_grad():
                heads = (list(dense[k:-1:4]) for k in range(4))
                counts.append(len(model.proposal_generator.predict(sizes, *heads)[0]))
    finally:
        fo.nms_thresh, fo.post_nms_topk_test = saved
    return candidates, *counts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Eager predictor and the two exported files of one random model whose class threshold
    lies between the blank image's best score and the other images' (so that it detects
    nothing in the blank image and something in the others)."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.controller.weight, std=0.05)
    torch.nn.init.normal_(model.proposal_generator.fcos_head.cls_logits.weight, std=0.3)
    # Boxes 8 strides wide: neighbouring locations' boxes overlap (IoU ~0.8), NMS suppresses.
    torch.nn.init.constant_(model.proposal_generator.fcos_head.bbox_pred.bias, 4.0)
    probe = Predictor(cfg)
    probe.model.load_state_dict(model.state_dict())
    blank = _max_class_score(model, probe, _blank())
    others = min(_max_class_score(model, probe, im) for im in _images())
    assert blank < others
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = blank + (others - blank) / 5
    weights = folder / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    tool = load_tool("export_model")
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
    assert got.pred_masks.dtype == torch.bool
    if len(got):
        assert (got.pred_masks != expected.pred_masks).float().mean() <= 1e-4


def test_the_images_exercise_the_cuts_and_nms(exported):
    eager, _ = exported
    for i, image in enumerate(_images()):
        candidates, with_nms, without_nms = _decoding_counts(eager.model, eager, image)
        assert without_nms > with_nms  # NMS suppresses
        final = len(eager(image))
        if i < 2:  # more candidates than PRE_NMS_TOPK on a level, more survivors than POST
            assert max(candidates) > PRE_NMS_TOPK and with_nms > POST_NMS_TOPK == final
        else:
            assert 0 < final < POST_NMS_TOPK


@pytest.mark.parametrize("fmt", ["onnx", "export"])
def test_exported_equals_eager(exported, fmt):
    eager, files = exported
    predictor = ExportedPredictor(files[fmt])
    images = _images()
    for image in images:
        _assert_close(predictor(image), eager(image))  # a batch of one
    # one batch of several sizes, padded together, with an image without detections inside
    batch = images + [_blank()]
    for got, expected in zip(predictor(batch), eager(batch)):
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
    predictor = ExportedPredictor(exported[1]["onnx"])
    with pytest.raises(ValueError, match="65 images in one call; the exported graph takes at most 64"):
        predictor([_blank()] * 65)


def test_files_without_the_stored_config_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ValueError, match="plain.onnx.*has no metadata 'condinst_percep.config'"):
        ExportedPredictor(str(path))
    program = torch.export.export(torch.nn.ReLU(), (torch.zeros(1),))
    torch.export.save(program, str(tmp_path / "plain.pt2"))
    with pytest.raises(ValueError, match="plain.pt2.*has no extra files 'config.yaml'"):
        ExportedPredictor(str(tmp_path / "plain.pt2"))


def test_onnx_file_holds_standard_ops_and_nms(exported):
    # Any ONNX runtime can run it: no custom domain, NMS as the standard op.
    import onnx

    model = onnx.load(exported[1]["onnx"])
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"} and not model.functions
    assert "NonMaxSuppression" in {node.op_type for node in model.graph.node}


def test_program_loads_in_a_fresh_process(exported):
    # The .pt2 holds the custom NMS op: ExportedPredictor's import registers it.
    eager, files = exported
    code = ("import sys, numpy as np; from condinst_percep import ExportedPredictor; "
            "image = np.load(sys.argv[2]); print(len(ExportedPredictor(sys.argv[1])(image)))")
    image_file = os.path.join(os.path.dirname(files["export"]), "image.npy")
    np.save(image_file, _images()[0])
    out = subprocess.run([sys.executable, "-c", code, files["export"], image_file],
                         capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.split()[-1]) == len(eager(_images()[0])) > 0
