"""Exported CondInst: the whole inference as one graph (ONNX or torch.export) and
``ExportedPredictor``."""
from .exported_predictor import ExportedPredictor
from .graph import export_onnx, export_program, sample_inputs, save_program
from .inference_graph import CondInstGraph
from .nms_op import batched_nms_op

__all__ = ["CondInstGraph", "ExportedPredictor", "batched_nms_op", "export_onnx", "export_program",
           "sample_inputs", "save_program"]
