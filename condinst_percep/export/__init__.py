"""Exported CondInst: the dense graph (ONNX or torch.export) and ``ExportedPredictor``."""
from .exported_predictor import ExportedPredictor
from .graph import DenseCondInst, export_onnx, export_program, save_program

__all__ = ["DenseCondInst", "ExportedPredictor", "export_onnx", "export_program", "save_program"]
