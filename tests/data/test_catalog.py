"""COCO reader, catalogs, dataset names and errors, on a hand-written COCO json."""

import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest

from condinst_percep.data import (
    BoxMode,
    DatasetCatalog,
    MetadataCatalog,
    get_detection_dataset_dicts,
    load_coco_json,
    register_coco_instances,
)


def _write_coco(folder, annotations=None, categories=None):
    """Four images: polygon + RLE objects, a crowd-only image, an empty image, a degenerate
    polygon. Category ids are deliberately non-contiguous and unsorted."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 4:12] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    # The same mask as column-major run lengths (COCO's uncompressed crowd RLE).
    counts = [85] + [5, 15] * 7 + [5, 20 * 30 - 85 - 8 * 5 - 7 * 15]
    uncompressed = {"size": [20, 30], "counts": counts}
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0,
             "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6]], "area": 12},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [4, 5, 8, 5], "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": rle["counts"].decode()}, "area": 40},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [4, 5, 8, 5], "iscrowd": 1,
             "segmentation": uncompressed, "area": 40},
            {"id": 4, "image_id": 13, "category_id": 3, "bbox": [0, 0, 2, 2], "iscrowd": 0,
             "segmentation": [[1, 2, 3, 4]], "area": 4},
        ]
    dataset = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 30} for i in (13, 10, 11, 12)
        ],
        "annotations": annotations,
        "categories": categories or [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    json_file = os.path.join(folder, "ann.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file, os.path.join(folder, "images")


@pytest.fixture
def coco_name(tmp_path, request):
    json_file, image_root = _write_coco(str(tmp_path))
    name = f"test_coco_{request.node.name}"
    register_coco_instances(name, {}, json_file, image_root)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_load_coco_json_records_and_id_mapping(coco_name):
    records = DatasetCatalog.get(coco_name)
    meta = MetadataCatalog.get(coco_name)
    # Contiguous ids follow increasing COCO ids: 3 -> 0, 7 -> 1.
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.thing_classes == ["three", "seven"]
    assert meta.evaluator_type == "coco"
    assert [r["image_id"] for r in records] == [10, 11, 12, 13]
    r10 = records[0]
    assert r10["file_name"] == os.path.join(meta.image_root, "10.jpg")
    assert (r10["height"], r10["width"]) == (20, 30)
    poly, rle = r10["annotations"]
    assert poly["category_id"] == 1 and rle["category_id"] == 0
    assert poly["bbox"] == [1, 2, 3, 4] and poly["bbox_mode"] == BoxMode.XYWH_ABS
    assert poly["segmentation"] == [[1, 2, 4, 2, 4, 6, 1, 6]]
    # Uncompressed RLE (crowd) becomes compressed RLE that decodes to the same mask.
    crowd = records[1]["annotations"][0]
    assert crowd["iscrowd"] == 1 and isinstance(crowd["segmentation"]["counts"], bytes)
    decoded = mask_util.decode(crowd["segmentation"])
    assert decoded.sum() == 40 and decoded[5:10, 4:12].all()
    # The degenerate polygon (2 points) is dropped, leaving image 13 without annotations.
    assert records[3]["annotations"] == []
    # Back from contiguous to COCO ids.
    inverse = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    assert [inverse[a["category_id"]] for a in r10["annotations"]] == [7, 3]


def test_filter_empty_drops_crowd_only_and_empty_images(coco_name):
    kept = get_detection_dataset_dicts([coco_name], filter_empty=True)
    assert [r["image_id"] for r in kept] == [10]
    assert len(get_detection_dataset_dicts(coco_name, filter_empty=False)) == 4


def test_coco_colon_name_needs_no_registration(tmp_path):
    json_file, image_root = _write_coco(str(tmp_path))
    name = f"coco:{json_file}:{image_root}"
    meta = MetadataCatalog.get(name)
    assert meta.json_file == json_file and meta.image_root == image_root
    records = DatasetCatalog.get(name)
    assert len(records) == 4 and meta.thing_classes == ["three", "seven"]


def test_unknown_dataset_error_lists_known_names():
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("no_such_dataset")
    msg = str(e.value)
    assert "no_such_dataset" in msg and "coco_2017_train" in msg and "shapes_train" in msg


def test_missing_files_name_dataset_and_path(tmp_path):
    json_file, image_root = _write_coco(str(tmp_path))
    missing_json = f"coco:{tmp_path / 'nope.json'}:{image_root}"
    expected = "annotation file not found: .*nope.json.*Known datasets: .*shapes_val"
    with pytest.raises(FileNotFoundError, match=expected):
        DatasetCatalog.get(missing_json)
    with pytest.raises(FileNotFoundError, match="image folder not found.*no_images"):
        DatasetCatalog.get(f"coco:{json_file}:{tmp_path / 'no_images'}")


def test_builtin_coco_follows_detectron2_datasets(tmp_path):
    code = (
        "from condinst_percep.data import DatasetCatalog, MetadataCatalog\n"
        "print(MetadataCatalog.get('coco_2017_val').json_file)\n"
        "DatasetCatalog.get('coco_2017_val')\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    expected = os.path.join(str(tmp_path), "coco", "annotations", "instances_val2017.json")
    assert proc.stdout.strip() == expected
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "FileNotFoundError" in last and "coco_2017_val" in last and expected in last
    assert "Known datasets" in last


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1]}, "category_id 5"),
        ({"id": 1, "image_id": 10, "category_id": 3}, "no 'bbox'"),
    ],
)
def test_bad_annotations_name_file_and_id(tmp_path, bad, match):
    json_file, image_root = _write_coco(str(tmp_path), annotations=[bad])
    with pytest.raises(ValueError, match=f"ann.json: annotation id 1 .*{match}"):
        load_coco_json(json_file, image_root)


def test_duplicate_annotation_ids_and_bad_json(tmp_path):
    ann = {"id": 4, "image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0}
    json_file, image_root = _write_coco(str(tmp_path), annotations=[ann, dict(ann, image_id=11)])
    with pytest.raises(ValueError, match="annotation id 4 .*duplicate"):
        load_coco_json(json_file, image_root)
    with open(json_file, "w") as f:
        f.write('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco_json(json_file, image_root, "broken")


def test_metadata_refuses_conflicting_values():
    meta = MetadataCatalog.get("test_meta_conflict")
    meta.set(thing_classes=["a"])
    meta.set(thing_classes=["a"])
    with pytest.raises(ValueError, match="thing_classes"):
        meta.thing_classes = ["b"]
    with pytest.raises(AttributeError, match="test_meta_conflict.*json_file"):
        meta.json_file
    MetadataCatalog.remove("test_meta_conflict")
