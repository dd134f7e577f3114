"""``torch.ops.condinst_percep.batched_nms``: the package's exact NMS as one graph node.

torch.export cannot trace greedy NMS (a loop whose length and result depend on the data), so
the exported graph calls :func:`~condinst_percep.layers.batched_nms` through a custom op: its
implementation *is* ``layers/nms.py`` (every device), its fake kernel says "int64 (k,), k known
at run time" (an unbacked size). An ExportedProgram keeps the node; loading the .pt2 needs
``import condinst_percep`` (``ExportedPredictor`` imports it), which registers the op.

For ONNX, :func:`batched_nms_onnx` translates the node (``torch.onnx.export(...,
custom_translation_table=ONNX_TRANSLATIONS)``) into the standard ``NonMaxSuppression`` op with
the same kept set and order as ``layers/nms.py``:

- visiting order: ONNX ``TopK`` (ties: lower index first, the spec's rule) sorts the boxes by
  decreasing score, exactly our stable sort; ``NonMaxSuppression`` then sees strictly
  decreasing rank scores ``n, n-1, ..., 1`` in that order, so its own tie handling never comes
  into play;
- class-aware: one score row per category (``NonMaxSuppression``'s class dimension), a box's
  rank in its category's row and 0 elsewhere, below the ``score_threshold`` 0.5; the boxes'
  coordinates stay untouched (torchvision's coordinate offset per class would change the float
  IoUs);
- threshold: ONNX Runtime compares the float32 IoU ``> iou_threshold`` in float32; it gets the
  largest float32 <= the threshold (``_float32_below``), so that ``IoU > t`` holds exactly when
  it holds in double precision, our (and torchvision's) comparison;
- IoU arithmetic: ONNX Runtime's ``inter / (area1 + area2 - inter)`` with areas ``(x2 - x1) *
  (y2 - y1)``, ours operation for operation (x and y swapped: ONNX reads ``[y1, x1, y2, x2]``,
  and products commute exactly); no overlap (``inter <= 0``) never suppresses, as ours (two equal
  zero-area boxes are both kept).

One difference that cannot matter for FCOS: ONNX Runtime sorts each box's corners (min/max)
before the IoU, ours does not; FCOS boxes ``(x - l, y - t, x + r, y + b)`` have ``l, t, r, b >=
0`` (ReLU or exp of the regression), so their corners are always in order.
``tests/export/test_nms_op.py`` checks both formats against ``layers/nms.py``.
"""

from __future__ import annotations

import torch

from ..layers.nms import _float32_below, batched_nms

__all__ = ["batched_nms_op", "batched_nms_onnx", "ONNX_TRANSLATIONS"]


@torch.library.custom_op("condinst_percep::batched_nms", mutates_args=())
def batched_nms_op(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`~condinst_percep.layers.batched_nms` as a custom op: (N, 4), (N,), (N,) ->
    int64 (K,) kept indices by decreasing score (ties: lower index first)."""
    return batched_nms(boxes, scores, idxs, iou_threshold)


@batched_nms_op.register_fake
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= boxes.shape[0])
    return boxes.new_empty((kept,), dtype=torch.int64)


def batched_nms_onnx(boxes, scores, idxs, iou_threshold: float):
    """The ONNX (onnxscript) translation of :func:`batched_nms_op`; see the module docstring
    for why its kept set and order are ``layers/nms.py``'s."""
    from onnxscript import opset18 as op

    n = op.Shape(scores)
    order = op.TopK(scores, n, axis=0, largest=1, sorted=1)[1]
    sorted_boxes = op.Gather(boxes, order, axis=0)
    sorted_idxs = op.Gather(idxs, order, axis=0)
    n_float = op.Squeeze(op.Cast(n, to=1))
    rank = op.Sub(n_float, op.Range(op.Constant(value_float=0.0), n_float,
                                    op.Constant(value_float=1.0)))
    # A -1 beside the categories: no boxes give 0 rows (ReduceMax of nothing is undefined).
    padded_idxs = op.Concat(sorted_idxs, op.Constant(value_ints=[-1]), axis=0)
    num_categories = op.Add(op.ReduceMax(padded_idxs, keepdims=0), op.Constant(value_int=1))
    categories = op.Range(op.Constant(value_int=0), num_categories, op.Constant(value_int=1))
    member = op.Equal(op.Unsqueeze(categories, [1]), op.Unsqueeze(sorted_idxs, [0]))
    rows = op.Where(member, op.Unsqueeze(rank, [0]), op.Constant(value_float=0.0))
    threshold = float(_float32_below(iou_threshold))
    selected = op.NonMaxSuppression(
        op.Unsqueeze(sorted_boxes, [0]), op.Unsqueeze(rows, [0]), n,
        op.Constant(value_float=threshold), op.Constant(value_float=0.5),
    )
    # (batch, category, position) rows, category by category: back to visiting order.
    positions = op.Squeeze(op.Slice(selected, [2], [3], [1]), [1])
    positions = op.TopK(positions, op.Shape(positions), axis=0, largest=0, sorted=1)[0]
    return op.Gather(order, positions, axis=0)


ONNX_TRANSLATIONS = {torch.ops.condinst_percep.batched_nms.default: batched_nms_onnx}
