"""COCO evaluation and the inference loop."""

from .coco_evaluation import COCOEvaluator, instances_to_coco_json
from .evaluator import DatasetEvaluator, inference_on_dataset
from .testing import flatten_results_dict, print_csv_format

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "flatten_results_dict",
    "inference_on_dataset",
    "instances_to_coco_json",
    "print_csv_format",
]
