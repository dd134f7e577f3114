"""``ExportedPredictor(path)``: :class:`~condinst_percep.engine.predictor.Predictor`'s call and
``Instances`` over an exported file (.onnx run by ONNX Runtime on the CPU, or a .pt2
ExportedProgram), the graph's dense outputs decoded by the package (``CondInst.decode``)."""

from __future__ import annotations

import os

import torch

from ..config import CfgNode, get_cfg
from ..engine.predictor import BasePredictor
from ..structures import Instances
from .graph import CONFIG_FILE, CONFIG_KEY

__all__ = ["ExportedPredictor"]


class ExportedPredictor(BasePredictor):
    """``path``: a file written by ``tools/export_model.py`` (its config inside).

    The post-processor is a CondInst built from that config with no weights loaded: only its
    parameter-free parts run (normalisation and padding, FCOS decoding, NMS, the dynamic mask
    head on the graph's controller outputs, the mask paste), the weights are all in the graph.
    ONNX files run on the CPU; ExportedPrograms on ``MODEL.DEVICE``.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ExportedPredictor: no exported model at {path!r}")
        ext = os.path.splitext(path)[1]
        if ext == ".onnx":
            self._load_onnx(path)
        elif ext == ".pt2":
            self._load_program(path)
        else:
            raise ValueError(f"ExportedPredictor: {path!r} is neither .onnx nor .pt2")
        from ..modeling import build_model

        super().__init__(self._cfg)
        self.model = build_model(self.cfg).eval()
        self.path = path

    @staticmethod
    def _parse_cfg(text: str | None, path: str, where: str) -> CfgNode:
        if not text:
            raise ValueError(f"ExportedPredictor: {path!r} has no {where}; export it with "
                             "tools/export_model.py")
        cfg = get_cfg()
        cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # the weights are in the graph
        return cfg

    def _load_onnx(self, path: str) -> None:
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError("running an ONNX export needs onnxruntime: pip install "
                              "'condinst-percep[export]'") from e
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self._cfg = self._parse_cfg(meta.get(CONFIG_KEY), path, f"metadata {CONFIG_KEY!r}")
        self._cfg.MODEL.DEVICE = "cpu"
        self.graph = self._run_onnx

    def _load_program(self, path: str) -> None:
        extra = {CONFIG_FILE: ""}
        program = torch.export.load(path, extra_files=extra)
        self._cfg = self._parse_cfg(extra[CONFIG_FILE], path, f"extra file {CONFIG_FILE!r}")
        self.graph = program.module().to(self._cfg.MODEL.DEVICE)

    def _run_onnx(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {"images": images.cpu().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)

    def run(self, inputs: list[dict]) -> list[Instances]:
        images, image_sizes = self.model.preprocess_image(inputs)
        dense = self.graph(images)
        results = self.model.decode(dense, inputs, image_sizes, images.shape[-2:])
        return [r["instances"] for r in results]
