"""Exporting CondInst's dense part: an ONNX file (the ``torch.onnx`` dynamo exporter) or a
``torch.export`` ExportedProgram, with a dynamic batch and image size.

The graph is ``CondInst.dense_outputs``: backbone, FPN, FCOS head with the controller and the
mask branch, from the normalised, padded batch (N, 3, Hp, Wp) to ``4 L + 1`` tensors. What
follows (``CondInst.decode``) stays eager, in the package, because its shapes depend on the
data: the score threshold and top-k per level select a data-dependent number of candidates,
greedy NMS is a sequential loop over them (ONNX's ``NonMaxSuppression`` is class-agnostic per
call and compares in float, not our exact kernel), the dynamic mask head runs once per
surviving detection and the paste produces one full-size mask each. ``ExportedPredictor`` pairs
the two, so a user never handles the graph's outputs.

The config travels inside the file (ONNX metadata ``condinst_percep.config``; the .pt2's extra
file ``config.yaml``): the post-processor and the input resize are built from it.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ..config import CfgNode

__all__ = ["DenseCondInst", "export_program", "export_onnx", "CONFIG_KEY", "CONFIG_FILE"]

CONFIG_KEY = "condinst_percep.config"
CONFIG_FILE = "config.yaml"
# Largest batch and padded side the graph's dynamic dimensions admit.
_MAX_BATCH = 64
_MAX_SIDE = 4096


class DenseCondInst(nn.Module):
    """``model.dense_outputs`` as a module of one tensor argument, the thing exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.dense_outputs(images)


def _dynamic_shapes(model: nn.Module) -> dict:
    div = model.backbone.size_divisibility or 1
    side = _MAX_SIDE // div
    return {"images": {
        0: Dim("batch", min=1, max=_MAX_BATCH),
        2: div * Dim("height_blocks", min=1, max=side),
        3: div * Dim("width_blocks", min=1, max=side),
    }}


def export_program(model: nn.Module, images: torch.Tensor) -> ExportedProgram:
    """Traces ``model.dense_outputs`` (eval mode) on ``images`` (N, 3, Hp, Wp), a normalised
    padded sample batch (``CondInst.preprocess_image``), Hp and Wp multiples of the backbone's
    size_divisibility. The batch and both sides stay dynamic.

    ``backed_size_oblivious``: without it the tracer specialises the sample's sizes 1 (a batch
    of one, or a 1-wide level at stride 128) and the graph then refuses other sizes, and
    sizes > 1 the other way round."""
    import torch.fx.experimental._config as fx_config

    if model.training:
        raise ValueError("export: put the model in eval mode first (its batch norms would train)")
    with fx_config.patch(backed_size_oblivious=True), torch.no_grad():
        return torch.export.export(
            DenseCondInst(model), (images,), dynamic_shapes=_dynamic_shapes(model)
        )


def export_onnx(model: nn.Module, images: torch.Tensor, path: str, cfg: CfgNode) -> str:
    """Writes ``path`` (.onnx): the dense graph from :func:`export_program`, converted by
    ``torch.onnx.export(..., dynamo=True)``, with ``cfg`` as metadata. Needs ``onnx`` and
    ``onnxscript`` (``pip install condinst-percep[export]``)."""
    try:
        import onnxscript  # noqa: F401  the dynamo exporter's dependency, named up front
    except ImportError as e:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'condinst-percep[export]'"
        ) from e
    program = export_program(model, images)
    num_outputs = len(program.graph_signature.user_outputs)
    onnx_program = torch.onnx.export(
        program, (images,), dynamo=True, input_names=["images"],
        output_names=[f"dense_{i}" for i in range(num_outputs)], verbose=False,
    )
    onnx_program.model.metadata_props[CONFIG_KEY] = cfg.dump()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx_program.save(path)
    return path


def save_program(program: ExportedProgram, path: str, cfg: CfgNode) -> str:
    """Writes ``path`` (.pt2) with ``cfg`` as its extra file ``config.yaml``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(program, path, extra_files={CONFIG_FILE: cfg.dump()})
    return path
