"""Exporting CondInst's whole inference (:class:`~.inference_graph.CondInstGraph`): an ONNX file
(the ``torch.onnx`` dynamo exporter, NMS translated to ``NonMaxSuppression``) or a
``torch.export`` ExportedProgram (NMS as the custom op ``condinst_percep::batched_nms``), with a
dynamic batch and image size.

The graph goes from the padded uint8 batch and the image sizes to the final detections with
their masks on the padded input canvas. Outside it, in ``ExportedPredictor``: the test-time
resize and padding before, and per image the crop of the masks to the image and their resize
to the caller's image size after (``modeling.condinst.inference.paste_masks``) — the inverse of
the resize, with one output size per image (a batch of images of different sizes has no single
output shape a graph could return).

The config travels inside the file (ONNX metadata ``condinst_percep.config``; the .pt2's extra
file ``config.yaml``), and so does the padding multiple (``condinst_percep.size_divisibility``,
``size_divisibility.txt``).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ..config import CfgNode
from ..structures import pad_to_batch
from .inference_graph import OUTPUT_NAMES, CondInstGraph
from .nms_op import ONNX_TRANSLATIONS

__all__ = ["export_program", "export_onnx", "save_program", "sample_inputs", "CONFIG_KEY",
           "CONFIG_FILE", "DIVISIBILITY_KEY", "DIVISIBILITY_FILE", "INPUT_NAMES"]

CONFIG_KEY = "condinst_percep.config"
CONFIG_FILE = "config.yaml"
DIVISIBILITY_KEY = "condinst_percep.size_divisibility"
DIVISIBILITY_FILE = "size_divisibility.txt"
INPUT_NAMES = ("images", "image_sizes", "output_sizes")
# Largest batch and padded side the graph's dynamic dimensions admit.
MAX_BATCH = 64
MAX_SIDE = 4096


def size_divisibility(model: nn.Module) -> int:
    """The multiple the graph's padded sides must be (1: any size)."""
    return model.backbone.size_divisibility or 1


def sample_inputs(model: nn.Module, inputs: list[dict]) -> tuple[torch.Tensor, ...]:
    """The graph's three inputs for CondInst input dicts (``image`` (3, h, w) uint8, optional
    ``height``/``width``), on the model's device."""
    images, sizes = pad_to_batch([x["image"] for x in inputs], size_divisibility(model))
    outputs = torch.tensor(
        [[int(x.get("height", h)), int(x.get("width", w))] for x, (h, w) in zip(inputs, sizes)]
    )
    return tuple(t.to(model.device) for t in (images, torch.tensor(sizes), outputs))


def _dynamic_shapes(model: nn.Module) -> dict:
    div = size_divisibility(model)
    side = MAX_SIDE // div
    batch = Dim("batch", min=1, max=MAX_BATCH)
    return {
        "images": {
            0: batch,
            2: div * Dim("height_blocks", min=1, max=side),
            3: div * Dim("width_blocks", min=1, max=side),
        },
        "image_sizes": {0: batch},
        "output_sizes": {0: batch},
    }


def export_program(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> ExportedProgram:
    """Traces :class:`CondInstGraph` of ``model`` (eval mode) on ``inputs``, the graph's three
    sample tensors (:func:`sample_inputs`). The batch and both padded sides stay dynamic (sides
    multiples of the backbone's size_divisibility).

    ``backed_size_oblivious``: without it the tracer specialises the sample's sizes 1 (a batch
    of one, or a 1-wide level at stride 128) and the graph then refuses other sizes, and
    sizes > 1 the other way round."""
    import torch.fx.experimental._config as fx_config

    if model.training:
        raise ValueError("export: put the model in eval mode first (its batch norms would train)")
    with fx_config.patch(backed_size_oblivious=True), torch.no_grad():
        return torch.export.export(
            CondInstGraph(model), tuple(inputs), dynamic_shapes=_dynamic_shapes(model)
        )


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, cfg: CfgNode) -> str:
    """Writes ``path`` (.onnx): the program of :func:`export_program`, converted by
    ``torch.onnx.export(..., dynamo=True)`` with the NMS node translated to ONNX's
    ``NonMaxSuppression`` (:mod:`.nms_op`), ``cfg`` and the padding multiple as metadata.
    Needs ``onnx`` and ``onnxscript`` (``pip install condinst-percep[export]``)."""
    try:
        import onnxscript  # noqa: F401  the dynamo exporter's dependency, named up front
    except ImportError as e:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'condinst-percep[export]'"
        ) from e
    program = export_program(model, inputs)
    onnx_program = torch.onnx.export(
        program, tuple(inputs), dynamo=True, input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES), custom_translation_table=ONNX_TRANSLATIONS,
        verbose=False,
    )
    onnx_program.model.metadata_props[CONFIG_KEY] = cfg.dump()
    onnx_program.model.metadata_props[DIVISIBILITY_KEY] = str(size_divisibility(model))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx_program.save(path)
    return path


def save_program(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, cfg: CfgNode) -> str:
    """Writes ``path`` (.pt2): the program of :func:`export_program` with ``cfg`` and the
    padding multiple as its extra files."""
    program = export_program(model, inputs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {CONFIG_FILE: cfg.dump(), DIVISIBILITY_FILE: str(size_divisibility(model))}
    torch.export.save(program, path, extra_files=extra)
    return path
