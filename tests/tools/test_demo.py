"""demo/demo.py on a generated video (frames written and read back, detections per frame equal to
the Predictor's on the decoded frames), on images (globs, PNGs at the input size), and without a
camera."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import tiny_cfg as _tiny_cfg
from tests.percep_helpers import STUDENT

from condinst_percep import Predictor
from condinst_percep.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"INPUT.MIN_SIZE_TEST": 136, "INPUT.MAX_SIZE_TEST": 200}


def tiny_cfg(**overrides):
    """The perceptual tests' student (3 classes, every detection kept, up to 20) at small sizes."""
    return _tiny_cfg(**{**STUDENT, **overrides})


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny config file (every candidate kept) and random weights, controller widened so
    that masks are not uniform."""
    folder = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    cfg = tiny_cfg(**SIZES)
    model = build_model(cfg)
    torch.nn.init.normal_(model.controller.weight, std=0.05)
    weights = folder / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    return str(config), str(weights), cfg


def _frames(n, h=90, w=120):
    frames = []
    for t in range(n):
        frame = np.full((h, w, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 8 * t, 45), 18, (30, 200, 240), -1)
        cv2.rectangle(frame, (70, 10), (110, 40 + 3 * t), (200, 60, 30), -1)
        frames.append(frame)
    return frames


def _read_video(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_video_in_mp4_out_counts_frames_and_detections(model_files, tmp_path):
    config, weights, cfg = model_files
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (120, 90))
    assert writer.isOpened()
    for frame in _frames(6):
        writer.write(frame)
    writer.release()
    out = str(tmp_path / "clip_vis.mp4")
    counts = _load_demo().main([
        "--config-file", config, "--video-input", video, "--output", out,
        "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights,
    ])
    decoded = _read_video(video)
    assert len(decoded) == 6 and len(counts) == 6
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(cfg)
    assert counts == [len(predictor(f)) for f in decoded]
    assert sum(counts) > 0
    drawn = _read_video(out)
    assert len(drawn) == 6 and drawn[0].shape == (90, 120, 3)
    # the drawing is on the frames: they differ from the input where instances are drawn
    assert any(np.abs(d.astype(int) - f.astype(int)).mean() > 2 for d, f in zip(drawn, decoded))


def test_images_by_glob_to_pngs(model_files, tmp_path):
    config, weights, _ = model_files
    frames = _frames(3)
    for i, frame in enumerate(frames[:2]):
        cv2.imwrite(str(tmp_path / f"in_{i}.png"), frame)
    cv2.imwrite(str(tmp_path / "other.jpg"), cv2.resize(frames[2], (60, 100)))
    out = tmp_path / "vis"
    demo = _load_demo()
    counts = demo.main([
        "--config-file", config, "--input", str(tmp_path / "in_*.png"), str(tmp_path / "other.jpg"),
        "--output", str(out), "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights,
    ])
    assert len(counts) == 3 and all(c > 0 for c in counts)
    assert sorted(os.listdir(out)) == ["in_0.png", "in_1.png", "other.png"]
    assert cv2.imread(str(out / "other.png")).shape == (100, 60, 3)
    # a threshold above every score draws nothing: the PNG is the input
    counts = demo.main([
        "--config-file", config, "--input", str(tmp_path / "in_0.png"), "--output",
        str(tmp_path / "plain.png"), "--confidence-threshold", "1.0", "--opts", "MODEL.WEIGHTS", weights,
    ])
    assert counts == [0]
    assert np.array_equal(cv2.imread(str(tmp_path / "plain.png")), frames[0])


def test_clear_errors(model_files, tmp_path):
    config, weights, _ = model_files
    demo = _load_demo()
    with pytest.raises(OSError, match="--webcam: camera 0"):
        demo.main(["--config-file", config, "--webcam", "--opts", "MODEL.WEIGHTS", weights])
    with pytest.raises(OSError, match="--video-input .*missing.mp4"):
        demo.main(["--config-file", config, "--video-input", str(tmp_path / "missing.mp4"),
                   "--output", str(tmp_path / "o.mp4"), "--opts", "MODEL.WEIGHTS", weights])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        demo.main(["--config-file", config, "--input", str(tmp_path / "none_*.jpg"),
                   "--opts", "MODEL.WEIGHTS", weights])
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        demo.main(["--config-file", config, "--input", "x.jpg"])
