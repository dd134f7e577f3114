"""MODEL.FCOS.NUM_CLASSES against the datasets' classes, before training and before inference:
the issue's two failures (a 4-class model on an 80-class COCO file dies inside the model at
iteration 1 / scores junk AP) become errors naming both numbers and the key."""

import os
import re

import pytest

from condinst_percep.config import get_cfg
from condinst_percep.data.builtin import COCO_CATEGORIES
from condinst_percep.data.classes import check_num_classes
from condinst_percep.engine import Trainer
from condinst_percep.modeling import build_model

from tests.conftest import TINY_MODEL
from tests.reliability.conftest import valid_dataset, write_dataset
from tests.train_helpers import CONFIG
from . import tool_exports


def _coco80(tmp_path) -> str:
    """A 3-image file listing COCO's 80 categories (its objects are 'person' and 'bicycle')."""
    dataset = valid_dataset()
    dataset["categories"] = [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES]
    json_file, image_root = write_dataset(tmp_path, dataset)
    return f"coco:{json_file}:{image_root}"


def _tiny_cfg(tmp_path, train: str, test: str, num_classes: int):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([str(x) for kv in TINY_MODEL.items() for x in kv])
    cfg.merge_from_list([
        "MODEL.FCOS.NUM_CLASSES", str(num_classes), "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{test}',)" if test else "()", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(1,)", "INPUT.MIN_SIZE_TRAIN", "(24,)", "INPUT.MIN_SIZE_TEST", "24",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    return cfg


MESSAGE_80 = r"MODEL.FCOS.NUM_CLASSES is 4 but dataset 'coco:.*' has 80 classes \(person, bicycle, car"


def test_training_a_4_class_model_on_80_classes_stops_before_iteration_1(tmp_path):
    name = _coco80(tmp_path)
    trainer = Trainer(_tiny_cfg(tmp_path, name, "", 4))
    with pytest.raises(ValueError, match=MESSAGE_80 + r".*\. Set MODEL.FCOS.NUM_CLASSES 80"):
        trainer.train()
    assert trainer.iter == 0 and not os.path.exists(tmp_path / "out" / "model_final.pth")


def test_evaluating_a_4_class_model_on_80_classes_stops_before_inference(tmp_path):
    name = _coco80(tmp_path)
    cfg = _tiny_cfg(tmp_path, name, name, 4)
    with pytest.raises(ValueError, match=MESSAGE_80):
        Trainer.test(cfg, build_model(cfg))
    assert not os.path.exists(tmp_path / "out" / "inference")


def test_test_set_checked_before_training_too(tmp_path):
    train = _coco80(tmp_path / "train")
    json_file, image_root = tool_exports.write_export(tmp_path / "test", tool_exports.cvat())
    trainer = Trainer(_tiny_cfg(tmp_path, train, f"coco:{json_file}:{image_root}", 80))
    with pytest.raises(ValueError, match=r"have different classes \(80: .* vs 2: \['a', 'b'\]\)"):
        trainer.train()
    assert trainer.iter == 0


def test_placeholder_category_is_stated(tmp_path, caplog):
    json_file, image_root = tool_exports.write_export(tmp_path, tool_exports.roboflow())
    name = f"coco:{json_file}:{image_root}"
    with pytest.raises(ValueError, match=re.escape(
        "MODEL.FCOS.NUM_CLASSES is 3 but dataset '" + name + "' has 2 classes (a, b). Not counted: "
        "placeholder category id 0 'shapes' of its json, which no annotation uses"
    ) + r".*detectron2 counts every category, 3 on this file\. Set MODEL.FCOS.NUM_CLASSES 2"):
        check_num_classes(3, [name])
    with caplog.at_level("INFO", logger="condinst_percep.data.classes"):
        check_num_classes(2, [name])
    assert "MODEL.FCOS.NUM_CLASSES 2 = the 2 classes of" in caplog.text
    assert "placeholder category id 0 'shapes'" in caplog.text
