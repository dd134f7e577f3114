"""The model's number of classes against the datasets' class lists, checked before any work.

A model with ``MODEL.FCOS.NUM_CLASSES`` smaller than the dataset's classes otherwise fails at
the first iteration inside the model (``gt_classes has values outside [0, K)``), and one with a
different number evaluated on the dataset scores junk AP without a word: its class indices name
other categories. :func:`check_num_classes` runs before training (on ``DATASETS.TRAIN`` and
``DATASETS.TEST``) and before inference (on each test set) and names both numbers, the classes,
the key to set, and any placeholder category the loader left out of the count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .catalog import DatasetCatalog, MetadataCatalog
from .coco_exports import PLACEHOLDERS_KEY
from .validation import BadDataReport, collect_bad_data

logger = logging.getLogger(__name__)

NUM_CLASSES_KEY = "MODEL.FCOS.NUM_CLASSES"


def dataset_classes(name: str, bad_data_policy: str = "error") -> list[str] | None:
    """The ``thing_classes`` of dataset ``name``, loading it (under ``bad_data_policy``) if its
    metadata does not hold them yet; None for a dataset that names no classes."""
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None:
        with collect_bad_data(BadDataReport(bad_data_policy)):
            DatasetCatalog.get(name)
    return metadata.get("thing_classes")


def _placeholder_note(name: str, num_classes: int) -> str:
    placeholders = MetadataCatalog.get(name).get(PLACEHOLDERS_KEY) or []
    if not placeholders:
        return ""
    listed = ", ".join(f"id {c['id']} {c['name']!r}" for c in placeholders)
    return (
        f". Not counted: placeholder categor{'ies' if len(placeholders) > 1 else 'y'} {listed} "
        "of its json, which no annotation uses (a labelling tool's project name or background "
        "entry, see condinst_percep/data/coco_exports.py); detectron2 counts every category, "
        f"{num_classes + len(placeholders)} on this file"
    )


def check_num_classes(num_classes: int, names: Sequence[str], bad_data_policy: str = "error") -> None:
    """Raises ``ValueError`` unless every dataset in ``names`` has the same classes and
    ``num_classes`` of them; logs the match otherwise. Datasets without ``thing_classes`` are
    not checked."""
    known = {}
    for name in names:
        classes = dataset_classes(name, bad_data_policy)
        if classes is not None:
            known[name] = list(classes)
    if not known:
        return
    (first, classes), *others = known.items()
    for name, other in others:
        if other != classes:
            raise ValueError(
                f"Datasets '{first}' and '{name}' have different classes ({len(classes)}: "
                f"{classes} vs {len(other)}: {other}): a model trained on one cannot be scored "
                "on the other"
            )
    if num_classes != len(classes):
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise ValueError(
            f"{NUM_CLASSES_KEY} is {num_classes} but dataset '{first}' has {len(classes)} "
            f"classes ({shown}){_placeholder_note(first, len(classes))}. Set {NUM_CLASSES_KEY} "
            f"{len(classes)} (in the config file or on the command line)"
        )
    logger.info(
        f"{NUM_CLASSES_KEY} {num_classes} = the {len(classes)} classes of {list(known)}"
        f"{_placeholder_note(first, len(classes))}"
    )
