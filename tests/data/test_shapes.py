"""The synthetic shapes set: determinism, occlusion, annotation consistency, caching."""

import json
import os
import threading

import numpy as np
import pycocotools.mask as mask_util
import pytest

from condinst_percep.data import DatasetCatalog, MetadataCatalog, generate_shapes, register_shapes
from condinst_percep.data.shapes import SHAPE_CLASSES, ensure_shapes, render_scene


def _decode(segm, h, w):
    if isinstance(segm, list):
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, h, w))).astype(bool)
    return mask_util.decode(segm).astype(bool)


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                out[os.path.relpath(os.path.join(root, n), folder)] = f.read()
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(num_images=6, min_size=48, max_size=64)
    generate_shapes(str(tmp_path / "a"), seed=3, **kw)
    generate_shapes(str(tmp_path / "b"), seed=3, **kw)
    generate_shapes(str(tmp_path / "c"), seed=4, **kw)
    a, b, c = (_files(str(tmp_path / x)) for x in "abc")
    assert len(a) == 7 and a == b
    assert a["annotations.json"] != c["annotations.json"]


def test_annotations_match_the_visible_masks(tmp_path):
    json_file = generate_shapes(str(tmp_path), num_images=30, min_size=64, max_size=96, seed=0)
    with open(json_file) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert len(by_image) == 30
    kinds = {isinstance(a["segmentation"], list) for a in data["annotations"]}
    assert kinds == {True, False}, "both polygon and RLE annotations expected"
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4}
    for img in data["images"]:
        h, w = img["height"], img["width"]
        assert 64 <= h <= 96 and 64 <= w <= 96
        masks = []
        for a in by_image[img["id"]]:
            m = _decode(a["segmentation"], h, w)
            assert a["iscrowd"] == 0 and a["area"] == m.sum() > 0
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            masks.append(m)
        # Occlusion: visible parts never overlap.
        stacked = np.stack(masks).astype(int)
        assert stacked.sum(0).max() <= 1


def test_occluded_masks_exclude_their_occluders():
    occluded = 0
    for i in range(40):
        rng = np.random.default_rng([0, i])
        image, classes, full, visible = render_scene(rng, 80, 80, max_objects=4)
        assert image.shape == (80, 80, 3) and image.dtype == np.uint8
        assert len(classes) == len(full) == len(visible) >= 1
        for k in range(len(full)):
            later = np.zeros_like(full[k])
            for m in full[k + 1 :]:
                later |= m
            assert np.array_equal(visible[k], full[k] & ~later)
            assert visible[k].sum() >= 0.3 * full[k].sum()
            occluded += int((full[k] & later).any())
    assert occluded >= 5


def test_ensure_shapes_caches_regenerates_and_survives_concurrency(tmp_path):
    folder = str(tmp_path / "set")
    params = dict(num_images=4, min_size=32, max_size=40, seed=1)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_shapes(folder, **params)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert sorted(os.listdir(tmp_path)) == ["set"]
    json_file, image_root = results[0]
    first = _files(folder)
    mtime = os.path.getmtime(json_file)
    ensure_shapes(folder, **params)
    assert os.path.getmtime(json_file) == mtime  # cached, not regenerated
    os.remove(os.path.join(image_root, "000002.jpg"))
    ensure_shapes(folder, **params)
    assert _files(folder) == first
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_registered_shapes_generate_on_first_get(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDINST_PERCEP_CACHE", str(tmp_path))
    register_shapes("test_shapes_tiny", num_images=3, min_size=32, max_size=32, seed=5)
    try:
        meta = MetadataCatalog.get("test_shapes_tiny")
        assert meta.json_file.startswith(str(tmp_path / "shapes")) and not os.path.exists(meta.json_file)
        records = DatasetCatalog.get("test_shapes_tiny")
        assert len(records) == 3 and os.path.isfile(meta.json_file)
        assert meta.thing_classes == list(SHAPE_CLASSES)
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
        assert all(os.path.isfile(r["file_name"]) for r in records)
    finally:
        DatasetCatalog.remove("test_shapes_tiny")
        MetadataCatalog.remove("test_shapes_tiny")


def test_builtin_shapes_are_registered():
    assert MetadataCatalog.get("shapes_train").evaluator_type == "coco"
    assert "shapes_val" in DatasetCatalog.list()
    assert MetadataCatalog.get("shapes_train").json_file != MetadataCatalog.get("shapes_val").json_file


@pytest.mark.parametrize("kw", [dict(min_size=0), dict(min_size=50, max_size=40), dict(num_images=0)])
def test_bad_parameters(tmp_path, kw):
    params = dict(num_images=2, min_size=32, max_size=40)
    params.update(kw)
    with pytest.raises(ValueError):
        generate_shapes(str(tmp_path), **params)
