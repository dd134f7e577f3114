"""CondInstGraph run eagerly (no export) against CondInst's own eager inference, which decodes
image by image with ``nonzero``: the batched decoding must give the same detections, bit for
bit, whatever the decoding settings (THRESH_WITH_CTR, both top-k cuts reached or not, relative
coordinates off) and for a batch of images of different sizes and output sizes."""
import numpy as np
import pytest
import torch

from tests.conftest import tiny_cfg
from tests.percep_helpers import STUDENT

from condinst_percep.export import CondInstGraph, sample_inputs
from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst.inference import paste_masks


def _inputs():
    rng = np.random.default_rng(1)
    sizes = ((96, 128, 150, 200), (64, 160, 64, 160), (32, 96, 70, 200))  # h, w, height, width
    return [{"image": torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)),
             "height": height, "width": width} for h, w, height, width in sizes]


# The student's threshold is 0: every location; 0.0105 keeps about a fifth of them.
@pytest.mark.parametrize("overrides", [
    {},
    {"MODEL.FCOS.INFERENCE_TH_TEST": 0.0105},
    {"MODEL.FCOS.THRESH_WITH_CTR": True, "MODEL.FCOS.INFERENCE_TH_TEST": 0.004},
    {"MODEL.FCOS.PRE_NMS_TOPK_TEST": 7, "MODEL.FCOS.POST_NMS_TOPK_TEST": 4},
    {"MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS": True},
])
def test_batched_graph_equals_eager_inference(overrides):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{**STUDENT, "MODEL.FCOS.POST_NMS_TOPK_TEST": 50, **overrides})
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.controller.weight, std=0.05)
    torch.nn.init.constant_(model.proposal_generator.fcos_head.bbox_pred.bias, 3.0)
    inputs = _inputs()
    graph_inputs = sample_inputs(model, inputs)
    with torch.no_grad():
        expected = [r["instances"] for r in model(inputs)]
        boxes, scores, classes, batch_index, masks = CondInstGraph(model)(*graph_inputs)
    assert [len(e) for e in expected] == torch.bincount(batch_index, minlength=3).tolist()
    assert sum(len(e) for e in expected) > 0
    start = 0
    for i, (x, e) in enumerate(zip(inputs, expected)):
        rows = slice(start, start + len(e))
        start += len(e)
        assert torch.equal(classes[rows], e.pred_classes)
        assert torch.equal(scores[rows], e.scores)
        assert torch.equal(boxes[rows], e.pred_boxes)
        size = tuple(graph_inputs[1][i].tolist())
        assert torch.equal(paste_masks(masks[rows, None], 1, size, (x["height"], x["width"])),
                           e.pred_masks)
