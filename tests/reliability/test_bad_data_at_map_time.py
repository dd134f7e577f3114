"""Bad data at map time, on generated files: image decoding conversions (gray, RGBA, 16-bit,
CMYK, EXIF orientation), unreadable image files and annotations the mapper refuses, replaced
deterministically under "skip" whatever the number of workers."""

import logging
import os
import re

import cv2
import numpy as np
import pytest
import torch

from condinst_percep.data import (
    DatasetMapper,
    MapDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    read_image,
)
from condinst_percep.data.samplers import GroupedBatchSampler, TrainingSampler
from condinst_percep.data.validation import BadDataError, MissingImageError
from condinst_percep.evaluation import COCOEvaluator, inference_on_dataset
from tests.reliability.conftest import (
    H,
    W,
    EmptyPredictor,
    coco_name,
    jpeg_with_exif_orientation,
    random_image,
    valid_dataset,
    write_dataset,
)


# --------------------------------------------------------------------------- image decoding


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_gray_rgba_and_16bit_images_become_3_channel_uint8(tmp_path, fmt):
    bgr = random_image(0)
    gray = bgr[..., 0]
    noise = np.random.default_rng(1).integers(0, 256, bgr.shape).astype(np.uint16)
    deep = bgr.astype(np.uint16) * 256 + noise
    alpha = np.random.default_rng(2).integers(0, 256, (H, W, 1), dtype=np.uint8)
    cases = {
        "gray.png": (gray, np.repeat(gray[..., None], 3, axis=2)),
        "bgra.png": (np.concatenate([bgr, alpha], axis=2), bgr),  # alpha dropped, not composited
        "deep.png": (deep, bgr),  # 16-bit: the high byte
        "deep_gray.png": (deep[..., 0], np.repeat(bgr[..., :1], 3, axis=2)),
    }
    for file_name, (pixels, expected_bgr) in cases.items():
        path = str(tmp_path / file_name)
        assert cv2.imwrite(path, pixels)
        image = read_image(path, fmt)
        expected = expected_bgr if fmt == "BGR" else expected_bgr[..., ::-1]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3), file_name
        assert np.array_equal(image, expected), file_name


def test_cmyk_jpeg_is_converted_to_colour(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = (200, 50, 30)
    rgb[:, 16:] = (20, 180, 240)
    path = str(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path, "RGB")
    assert image.shape == (16, 32, 3)
    assert np.abs(image.astype(int) - rgb).max() <= 3


def _orient(image, orientation):
    """EXIF orientation -> the displayed image (the TIFF/EXIF spec, as PIL's exif_transpose)."""
    return {
        1: image,
        2: image[:, ::-1],
        3: image[::-1, ::-1],
        4: image[::-1],
        5: image.transpose(1, 0, 2),
        6: np.rot90(image, k=-1),
        7: image[::-1, ::-1].transpose(1, 0, 2),
        8: np.rot90(image, k=1),
    }[orientation]


def test_exif_orientation_is_applied_and_record_size_checked(tmp_path):
    image = random_image(4, 20, 30)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    plain = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    for orientation in range(1, 9):
        path = str(tmp_path / f"o{orientation}.jpg")
        with open(path, "wb") as f:
            f.write(jpeg_with_exif_orientation(jpeg, orientation))
        assert np.array_equal(read_image(path), _orient(plain, orientation)), orientation
    rotated = {"file_name": str(tmp_path / "o6.jpg"), "image_id": 6, "height": 30, "width": 20,
               "annotations": []}
    assert DatasetMapper(False, [])(rotated)["image"].shape == (3, 30, 20)
    with pytest.raises(BadDataError, match=r"o6.jpg \(image_id 6\) is 30x20 \(HxW\) but its record "
                       r"says 20x30; the sizes are swapped: the file probably has an EXIF orientation"):
        DatasetMapper(False, [])(dict(rotated, height=20, width=30))


# -------------------------------------------------------------------- map-time file failures


def _break_image(path, kind):
    """Replaces the image at ``path`` by a bad file of ``kind``."""
    os.remove(path)
    good = random_image(2, 60, 80)
    content = {
        "zero_bytes": b"",
        "not_an_image": b"this is not an image" * 10,
        "truncated_jpeg": cv2.imencode(".jpg", good)[1].tobytes()[:2000],
        "truncated_png": cv2.imencode(".png", good)[1].tobytes()[:5000],
        "wrong_size": cv2.imencode(".png", random_image(2, H + 2, W))[1].tobytes(),
    }
    if kind == "directory":
        os.mkdir(path)
    elif kind != "missing":
        with open(path, "wb") as f:
            f.write(content[kind])


BAD_FILE_ERRORS = {
    "missing": r"Image file not found: .*2.png",
    "directory": r"Cannot read image file .*2.png: \[Errno 21\] Is a directory",
    "zero_bytes": r"Cannot decode image file .*2.png \(0 bytes\)",
    "not_an_image": r"Cannot decode image file .*2.png \(200 bytes\): not an image, or corrupt",
    "truncated_jpeg": r"Cannot decode image file .*2.png \(2000 bytes\)",
    "truncated_png": r"Cannot decode image file .*2.png \(5000 bytes\)",
    "wrong_size": r"2.png \(image_id 2\) is 26x32 \(HxW\) but its record says 24x32",
}


@pytest.fixture
def bad_image_dataset(tmp_path, request):
    """Three images, the second one broken in the way the test's parameter names."""
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    _break_image(os.path.join(image_root, "2.png"), request.param)
    return request.param, coco_name(json_file, image_root)


def _expected_files(seed, bad_index, num_samples, size=3):
    """The files the train loader must yield: the sampler's stream, each bad index replaced by
    the first good index drawn from default_rng([seed, rank, k, attempt])."""
    sampler = GroupedBatchSampler(TrainingSampler(size, seed=seed, rank=0, world_size=1), 1)
    files, num_skips = [], 0
    for (index, key), _ in zip((b[0] for b in sampler), range(num_samples)):
        attempt = 1
        while index == bad_index:
            index = int(np.random.default_rng([*key, attempt]).integers(size))
            attempt += 1
            num_skips += 1
        files.append(f"{index + 1}.png")
    return files, num_skips


@pytest.mark.parametrize("bad_image_dataset", list(BAD_FILE_ERRORS), indirect=True)
def test_bad_image_file_errors_or_is_replaced_deterministically(bad_image_dataset, data_cfg, caplog):
    kind, name = bad_image_dataset
    data_cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(BadDataError, match=BAD_FILE_ERRORS[kind]) as e:
        for _, batch in zip(range(10), build_detection_train_loader(data_cfg)):
            pass
    assert isinstance(e.value, MissingImageError) == (kind == "missing")

    data_cfg.DATALOADER.BAD_DATA_POLICY = "skip"
    with caplog.at_level(logging.WARNING, logger="condinst_percep.data"):
        batches = [b for _, b in zip(range(6), build_detection_train_loader(data_cfg))]
    files = [os.path.basename(x["file_name"]) for b in batches for x in b]
    expected_files, num_skips = _expected_files(data_cfg.SEED, 1, 12)
    assert files == expected_files and "2.png" not in files
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped: ")]
    assert len(skips) == num_skips > 0
    assert all(re.search(BAD_FILE_ERRORS[kind] + ".*; replaced by dataset index", s) for s in skips)
    # Resuming at iteration 3 gives the uninterrupted run's batches 3..5, augmentations included.
    resumed = [b for _, b in zip(range(3), build_detection_train_loader(data_cfg, start_iter=3))]
    for a, b in zip(batches[3:], resumed):
        assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))

    # Inference: the bad image gives an empty batch, the others are predicted.
    model = EmptyPredictor()
    with caplog.at_level(logging.WARNING):
        results = inference_on_dataset(
            model, build_detection_test_loader(data_cfg, name), COCOEvaluator(name, distributed=False)
        )
    assert model.num_calls == 2 and results["bbox"]["AP"] == 0.0
    assert "1 of 3 images of" in caplog.text and "got no output" in caplog.text
    data_cfg.DATALOADER.BAD_DATA_POLICY = "error"
    with pytest.raises(BadDataError, match=BAD_FILE_ERRORS[kind]):
        list(build_detection_test_loader(data_cfg, name))


def test_map_time_annotation_error_names_the_file_and_skip_replaces(tmp_path):
    """A record from a non-COCO source (no load-time checks): RLE counts that would overrun
    pycocotools' buffer are refused by the mapper."""
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, random_image(0))
    good = {"file_name": path, "image_id": 1, "height": H, "width": W, "annotations": []}
    bad = dict(good, image_id=2, annotations=[
        {"id": 5, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": [0, H * W + 1000]}}])
    mapper = DatasetMapper(True, [])
    with pytest.raises(BadDataError, match=r"a.png \(image id 2\): Annotation 5: RLE counts are "
                       r"malformed or do not sum to 24x32 pixels \(sum 1768\)"):
        MapDataset([good, bad], mapper, "error")[1, (0, 0, 0)]
    skipping = MapDataset([good, bad], mapper, "skip")
    first = np.random.default_rng([0, 0, 0, 1]).integers(2)
    out = skipping[1, (0, 0, 0)]
    assert first == 0 and out["image_id"] == 1 and skipping.num_skipped == 1
    with pytest.raises(BadDataError, match="16 bad samples in a row"):
        MapDataset([bad], mapper, "skip")[0, (0, 0, 0)]


def test_replacement_is_independent_of_the_number_of_workers(tmp_path, data_cfg):
    json_file, image_root = write_dataset(tmp_path, valid_dataset())
    os.remove(os.path.join(image_root, "2.png"))
    data_cfg.DATASETS.TRAIN = (coco_name(json_file, image_root),)
    data_cfg.DATALOADER.BAD_DATA_POLICY = "skip"
    runs = []
    for workers in (0, 2):
        data_cfg.DATALOADER.NUM_WORKERS = workers
        runs.append([b for _, b in zip(range(4), build_detection_train_loader(data_cfg))])
    for a, b in zip(*runs):
        assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    data_cfg.DATALOADER.BAD_DATA_POLICY = "error"
    with pytest.raises(MissingImageError, match="2.png .*'skip' would replace this sample"):
        for _ in zip(range(4), build_detection_train_loader(data_cfg)):
            pass
