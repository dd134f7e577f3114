"""Datasets (catalog, COCO reader, synthetic shapes), the mapper, samplers and loaders."""

from . import builtin  # noqa: F401  registers coco_2017_* and shapes_* on import
from .build import (
    MapDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json, register_coco_instances
from .dataset_mapper import DatasetMapper, build_augmentation
from .detection_utils import BoxMode, read_image
from .samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from .shapes import SHAPE_CLASSES, generate_shapes, register_shapes, shapes_cache_root

__all__ = [
    "BoxMode",
    "DatasetCatalog",
    "DatasetMapper",
    "GroupedBatchSampler",
    "InferenceSampler",
    "MapDataset",
    "Metadata",
    "MetadataCatalog",
    "RepeatFactorTrainingSampler",
    "SHAPE_CLASSES",
    "TrainingSampler",
    "build_augmentation",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "generate_shapes",
    "get_detection_dataset_dicts",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
    "register_shapes",
    "shapes_cache_root",
]
