"""``torch.ops.condinst_percep.batched_nms`` (eager, in an ExportedProgram, and translated to ONNX's
NonMaxSuppression run by ONNX Runtime) against ``layers/nms.py``'s greedy NMS, the eager
reference: ties in score, equal boxes, zero-area boxes, many categories, IoUs at the
threshold's float32 neighbours, no boxes."""
import numpy as np
import pytest
import torch
from torch.export import Dim

from condinst_percep.export.nms_op import ONNX_TRANSLATIONS, batched_nms_op
from condinst_percep.layers import batched_nms
from condinst_percep.structures import pairwise_iou

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

THRESHOLD = 0.6


class _NMS(torch.nn.Module):
    def forward(self, boxes, scores, idxs):
        return batched_nms_op(boxes, scores, idxs, THRESHOLD)


def _problem(seed: int, n: int = 300, num_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 25 + 1], dim=1)
    scores = (torch.rand(n, generator=g) * 10).round() / 10  # many exact ties
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    boxes[5:10] = boxes[0]  # equal boxes, same and other categories
    boxes[10:13] = torch.tensor([3.0, 3.0, 3.0, 9.0])  # equal zero-area boxes
    return boxes, scores, idxs


def _near_threshold(seed: int):
    """Two boxes of one category whose float32 IoU is within a few ulps of the threshold."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.rand(2, generator=g) * 100
    overlap = 7.5 + (torch.rand(1, generator=g).item() - 0.5) * 1e-4  # IoU = 10w / (200 - 10w)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0 - overlap, 0.0, 20.0 - overlap, 10.0]])
    return boxes + offset.repeat(2), torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    n = Dim("n", min=0)
    program = torch.export.export(_NMS(), _problem(0), dynamic_shapes=({0: n}, {0: n}, {0: n}))
    path = str(tmp_path_factory.mktemp("nms") / "nms.onnx")
    torch.onnx.export(program, _problem(0), dynamo=True, custom_translation_table=ONNX_TRANSLATIONS,
                      verbose=False).save(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run_onnx(*args):
        feeds = {name: a.numpy() for name, a in zip(names, args)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return {"op": lambda *a: batched_nms_op(*a, THRESHOLD), "program": program.module(),
            "onnx": run_onnx}


@pytest.mark.parametrize("kind", ["op", "program", "onnx"])
def test_custom_op_equals_layers_nms(graphs, kind):
    run = graphs[kind]
    suppressed = 0
    for seed in range(8):
        args = _problem(seed, num_classes=[1, 3, 80][seed % 3])
        expected = batched_nms(*args, THRESHOLD)
        suppressed += len(args[0]) - len(expected)
        assert torch.equal(run(*args), expected)
    assert suppressed > 0
    near = [_near_threshold(seed) for seed in range(300)]
    decided = {len(batched_nms(*args, THRESHOLD)) for args in near}
    assert decided == {1, 2}  # both sides of the threshold occur
    assert any(float(pairwise_iou(a[0][:1], a[0][1:])) == np.float32(THRESHOLD) for a in near)
    for args in near:
        assert torch.equal(run(*args), batched_nms(*args, THRESHOLD))
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert run(*empty).shape == (0,)


def test_onnx_nms_sorts_corners_where_ours_does_not(graphs):
    # The one documented difference: ONNX Runtime orders each box's corners first. FCOS boxes
    # (x - l, y - t, x + r, y + b) with ReLU'd l, t, r, b >= 0 always have ordered corners.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 0.0, 0.0]])
    args = (boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64))
    assert batched_nms(*args, THRESHOLD).tolist() == [0, 1]
    assert graphs["onnx"](*args).tolist() == [0]
