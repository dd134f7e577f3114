"""``ExportedPredictor(path)``: :class:`~condinst_percep.engine.predictor.Predictor`'s call and
``Instances`` over an exported file (.onnx run by ONNX Runtime on the CPU, or a .pt2
ExportedProgram). The graph holds the whole inference; this wrapper resizes and pads the images
before it and, per image, resizes the masks to the image's own size after it."""

from __future__ import annotations

import os

import torch

from ..config import CfgNode, get_cfg
from ..engine.predictor import BasePredictor
from ..modeling.condinst.inference import paste_masks
from ..structures import Instances, pad_to_batch
from .graph import (
    CONFIG_FILE, CONFIG_KEY, DIVISIBILITY_FILE, DIVISIBILITY_KEY, INPUT_NAMES, MAX_BATCH, MAX_SIDE,
)

__all__ = ["ExportedPredictor"]


class ExportedPredictor(BasePredictor):
    """``path``: a file written by ``tools/export_model.py`` (its config inside). ONNX files run
    on the CPU; ExportedPrograms on ``MODEL.DEVICE`` of the stored config."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ExportedPredictor: no exported model at {path!r}")
        ext = os.path.splitext(path)[1]
        if ext == ".onnx":
            cfg = self._load_onnx(path)
        elif ext == ".pt2":
            cfg = self._load_program(path)
        else:
            raise ValueError(f"ExportedPredictor: {path!r} is neither .onnx nor .pt2")
        super().__init__(cfg)
        self.path = path

    @staticmethod
    def _parse(
        path: str, where: str, config: str | None, divisibility: str | None
    ) -> tuple[CfgNode, int]:
        if not config or not divisibility:
            raise ValueError(f"ExportedPredictor: {path!r} has no {where}; export it with "
                             "tools/export_model.py")
        cfg = get_cfg()
        cfg.merge_from_other_cfg(CfgNode.load_cfg(config))
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # the weights are in the graph
        cfg.freeze()
        return cfg, int(divisibility)

    def _load_onnx(self, path: str) -> CfgNode:
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError("running an ONNX export needs onnxruntime: pip install "
                              "'condinst-percep[export]'") from e
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        cfg, self.divisibility = self._parse(
            path, f"metadata {CONFIG_KEY!r} and {DIVISIBILITY_KEY!r}", meta.get(CONFIG_KEY),
            meta.get(DIVISIBILITY_KEY),
        )
        self.device = torch.device("cpu")
        self.graph = self._run_onnx
        return cfg

    def _load_program(self, path: str) -> CfgNode:
        extra = {CONFIG_FILE: "", DIVISIBILITY_FILE: ""}
        program = torch.export.load(path, extra_files=extra)
        cfg, self.divisibility = self._parse(
            path, f"extra files {CONFIG_FILE!r} and {DIVISIBILITY_FILE!r}", extra[CONFIG_FILE],
            extra[DIVISIBILITY_FILE],
        )
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.graph = program.module().to(self.device)
        return cfg

    def _run_onnx(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feeds))

    def run(self, inputs: list[dict]) -> list[Instances]:
        if len(inputs) > MAX_BATCH:
            raise ValueError(f"ExportedPredictor: {len(inputs)} images in one call; the exported "
                             f"graph takes at most {MAX_BATCH} (split the list)")
        images, sizes = pad_to_batch([x["image"] for x in inputs], self.divisibility)
        image_sizes = torch.tensor(sizes)
        if max(images.shape[-2:]) > MAX_SIDE:
            raise ValueError(f"ExportedPredictor: images resized and padded to "
                             f"{tuple(images.shape[-2:])}; the exported graph takes sides up to "
                             f"{MAX_SIDE} (INPUT.MAX_SIZE_TEST)")
        output_sizes = torch.tensor([[x["height"], x["width"]] for x in inputs])
        graph_inputs = (t.to(self.device) for t in (images, image_sizes, output_sizes))
        boxes, scores, classes, batch_index, masks = self.graph(*graph_inputs)
        counts = torch.bincount(batch_index, minlength=len(inputs)).tolist()
        results, start = [], 0
        for i, (x, count) in enumerate(zip(inputs, counts)):
            rows, start = slice(start, start + count), start + count
            size = (x["height"], x["width"])
            pasted = paste_masks(masks[rows, None], 1, sizes[i], size)
            results.append(Instances(
                size, pred_boxes=boxes[rows], scores=scores[rows], pred_classes=classes[rows],
                pred_masks=pasted,
            ))
        return results
