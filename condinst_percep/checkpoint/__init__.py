"""Loading AdelaiDet/detectron2/Caffe2/torchvision weights by exact name; atomic saving."""
from .checkpointer import Checkpointer, atomic_write
from .formats import (
    CheckpointFileError,
    RawCheckpoint,
    caffe2_resnet_name,
    read_checkpoint,
    torchvision_resnet_name,
)
from .matching import (
    CheckpointMismatchError,
    LoadReport,
    check_format_conventions,
    load_model_weights,
)
from .paths import PathManager, detectron2_url, resolve_path

__all__ = [
    "CheckpointFileError",
    "CheckpointMismatchError",
    "Checkpointer",
    "LoadReport",
    "PathManager",
    "RawCheckpoint",
    "atomic_write",
    "caffe2_resnet_name",
    "check_format_conventions",
    "detectron2_url",
    "load_model_weights",
    "read_checkpoint",
    "resolve_path",
    "torchvision_resnet_name",
]
