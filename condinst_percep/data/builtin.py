"""Datasets registered on import: COCO 2017 (detectron2's layout) and the synthetic shapes sets.

COCO paths are resolved against ``$DETECTRON2_DATASETS`` (default ``./datasets``) at import:
``coco/annotations/instances_{train,val}2017.json`` and ``coco/{train,val}2017/``.
"""

from __future__ import annotations

import os

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json
from .shapes import register_shapes

# The 80 COCO thing categories (id, name), so a COCO model can name its classes without the json.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]

COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}

# name -> generator parameters (see register_shapes); different seeds keep val apart from train.
SHAPES_SPLITS = {
    "shapes_train": dict(num_images=1000, seed=0),
    "shapes_val": dict(num_images=100, seed=1),
}


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _load_builtin_coco(name: str, json_file: str, image_root: str) -> list[dict]:
    for what, path, exists in (
        ("annotation file", json_file, os.path.isfile),
        ("image folder", image_root, os.path.isdir),
    ):
        if not exists(path):
            raise FileNotFoundError(
                f"Dataset '{name}': {what} not found: {path}. Put COCO under "
                f"$DETECTRON2_DATASETS (now {datasets_root()!r}) as coco/annotations/"
                f"instances_*2017.json and coco/{{train,val}}2017/"
            )
    return load_coco_json(json_file, image_root, name)


def register_all_coco(root: str) -> None:
    for name, (image_dir, json_rel) in COCO_SPLITS.items():
        json_file, image_root = os.path.join(root, json_rel), os.path.join(root, image_dir)
        DatasetCatalog.register(
            name, lambda n=name, j=json_file, i=image_root: _load_builtin_coco(n, j, i)
        )
        MetadataCatalog.get(name).set(
            thing_classes=[c for _, c in COCO_CATEGORIES],
            thing_dataset_id_to_contiguous_id={cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)},
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
        )


def register_all_shapes() -> None:
    for name, params in SHAPES_SPLITS.items():
        register_shapes(name, **params)


register_all_coco(datasets_root())
register_all_shapes()
