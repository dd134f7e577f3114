"""tools/compare_grid.py (GT | model | model pictures at full resolution) and tools/plot_metrics.py
with several runs, on a generated dataset and a tiny untrained model (no training)."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.data import DatasetCatalog
from condinst_percep.modeling import build_model
from tests.conftest import TINY_MODEL, load_tool
from tests.data import tool_exports
from tests.train_helpers import CONFIG


OPTS = [str(x) for kv in TINY_MODEL.items() for x in kv] + [
    "MODEL.FCOS.NUM_CLASSES", "2", "INPUT.MIN_SIZE_TEST", "48", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0"]


def _weights(tmp_path) -> str:
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(OPTS)
    Checkpointer(build_model(cfg), str(tmp_path)).save("tiny")
    return str(tmp_path / "tiny.pth")


def test_compare_grid_draws_gt_and_each_model_at_full_resolution(tmp_path):
    compare_grid = load_tool("compare_grid")
    json_file, image_root = tool_exports.write_export(tmp_path / "data", tool_exports.cvat())
    name = f"coco:{json_file}:{image_root}"
    weights = _weights(tmp_path)
    written = compare_grid.main([
        "--dataset", name, "--num", "2", "--output", str(tmp_path / "out"),
        "--confidence-threshold", "0", "--model", "a", CONFIG, weights,
        "--model", "b", CONFIG, weights, "--opts", *OPTS])
    assert len(written) == 2
    record = DatasetCatalog.get(name)[0]
    grid = cv2.imread(written[0])
    h, w, t = record["height"], record["width"], compare_grid.TITLE_HEIGHT
    assert grid.shape == (t + h, 3 * w, 3)
    photo = cv2.imread(record["file_name"])
    gt_panel, model_a, model_b = (grid[t:, k * w:(k + 1) * w] for k in range(3))
    # Ground truth is drawn on the photograph: inside the objects it differs, far outside not.
    quad = cv2.fillPoly(np.zeros((h, w), np.uint8),
                        [np.array(tool_exports.QUAD).reshape(-1, 2).round().astype(np.int32)], 1)
    inside = cv2.erode(quad, np.ones((5, 5), np.uint8)).astype(bool)
    diff = np.abs(gt_panel.astype(int) - photo.astype(int)).sum(-1)
    assert diff[inside].mean() > 20 and np.median(diff[44:, 50:]) == 0
    # The two panels come from the same weights: identical drawings.
    assert np.array_equal(model_a, model_b)
    assert (grid[:t] == 255).mean() > 0.9  # the title strips


def test_compare_grid_refuses_a_model_with_other_classes(tmp_path):
    compare_grid = load_tool("compare_grid")
    json_file, image_root = tool_exports.write_export(tmp_path / "data", tool_exports.cvat())
    weights = _weights(tmp_path)
    opts = [o if o != "2" else "3" for o in OPTS]
    with pytest.raises(ValueError, match="MODEL.FCOS.NUM_CLASSES is 3 but dataset .* has 2 classes"):
        compare_grid.main(["--dataset", f"coco:{json_file}:{image_root}", "--output",
                           str(tmp_path / "out"), "--model", "a", CONFIG, weights, "--opts", *opts])


def test_compare_grid_palette_png_keeps_the_picture(tmp_path):
    compare_grid = load_tool("compare_grid")
    json_file, image_root = tool_exports.write_export(tmp_path / "data", tool_exports.cvat())
    args = ["--dataset", f"coco:{json_file}:{image_root}", "--num", "1", "--confidence-threshold",
            "0", "--model", "a", CONFIG, _weights(tmp_path)]
    (full,) = compare_grid.main([*args, "--output", str(tmp_path / "full"), "--opts", *OPTS])
    (small,) = compare_grid.main([*args, "--colors", "64", "--output", str(tmp_path / "pal"),
                                  "--opts", *OPTS])
    with Image.open(small) as im:
        assert im.mode == "P" and len(im.getcolors()) <= 64
        palette = np.asarray(im.convert("RGB"))[..., ::-1].astype(int)
    exact = cv2.imread(full).astype(int)
    assert palette.shape == exact.shape
    # 64 colours for a noisy generated photo: a few levels off per pixel on average, not a new picture.
    error = np.abs(palette - exact).mean()
    assert error < 6, error
    with pytest.raises(SystemExit):
        compare_grid.parse_args([*args, "--colors", "300", "--output", str(tmp_path / "x")])


def test_plot_metrics_overlays_runs_per_loss(tmp_path):
    plot_metrics = load_tool("plot_metrics")
    paths = []
    for run, scale in (("base", 1.0), ("percep", 0.8)):
        lines = [{"iteration": i, "total_loss": scale * 3 / (i + 1), "loss_mask": scale / (i + 1)}
                 for i in range(19, 200, 20)]
        if run == "percep":
            for line in lines:
                line["loss_percep"] = 0.1
        lines.append({"iteration": 199, "bbox/AP": 10 * scale, "segm/AP": 9 * scale})
        (tmp_path / run).mkdir()
        paths.append(str(tmp_path / run / "metrics.json"))
        with open(paths[-1], "w") as f:
            f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    out = str(tmp_path / "curves.png")
    assert plot_metrics.main([*paths, "--labels", "baseline", "+percep", "--output", out]) == 0
    assert plot_metrics.plot_runs(
        {k: plot_metrics.load_metrics(p) for k, p in zip(("a", "b"), paths)}, out
    ) == ["total_loss", "loss_mask", "loss_percep", "AP"]
    image = cv2.imread(out)
    assert image.shape[1] == 1800 and image.shape[0] == 800  # 3 x 2 panels of 6 x 4 inches
    with pytest.raises(SystemExit):
        plot_metrics.main([*paths, "--labels", "only-one"])
    with pytest.raises(ValueError, match="two runs are labelled 'x'"):
        plot_metrics.main([*paths, "--labels", "x", "x", "--output", out])
