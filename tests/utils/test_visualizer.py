"""The drawing helper and tools/plot_metrics.py."""

import json

import cv2
import numpy as np
import pytest
import torch

from condinst_percep.utils.visualizer import draw_instances, instance_colors
from tests.conftest import load_tool



def test_draw_instances_blends_masks_and_leaves_the_rest():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[0, 30:50, 40:70] = True
    masks[1, 35:45, 50:60] = True  # inside the first: drawn on top of it
    out = draw_instances(
        image, masks=masks, boxes=None, classes=torch.tensor([0, 2]),
        scores=torch.tensor([0.9, 0.5]), class_names=["a", "b", "c"], alpha=0.5,
    )
    colors = instance_colors([0, 2]).astype(np.float32)
    first = (100 * 0.5 + colors[0] * 0.5).astype(np.uint8)
    both = ((first.astype(np.float32)) * 0.5 + colors[1] * 0.5).astype(np.uint8)
    assert (out[33, 45] == first).all()  # inside mask 0 only, away from outlines and labels
    assert (out[40, 55] == both).all()
    assert (out[5:25, 0:30] == 100).all() and (out[55:, :35] == 100).all()
    assert (image == 100).all()  # the input is not modified


def test_draw_instances_boxes_and_labels():
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_instances(
        image, boxes=np.array([[20.0, 40.0, 90.0, 80.0]]), classes=[1], scores=[0.87],
        class_names=["circle", "rectangle"],
    )
    color = instance_colors([1])[0]
    assert (out[60, 20] == color).all() and (out[80, 60] == color).all()  # box edges
    assert (out[60, 55] == 0).all()  # box interior untouched without a mask
    assert (out[25:40, 20:60] != 0).any()  # label above the box
    empty = draw_instances(image, masks=np.zeros((0, 100, 120), bool), classes=np.zeros(0, int))
    assert (empty == image).all()
    with pytest.raises(ValueError, match=r"masks have size \(5, 5\)"):
        draw_instances(image, masks=np.zeros((1, 5, 5), bool), classes=[0])
    with pytest.raises(ValueError, match="uint8 BGR"):
        draw_instances(np.zeros((10, 10), np.uint8), classes=[0])


def test_plot_metrics_reads_json_lines_and_writes_png(tmp_path):
    plot_metrics = load_tool("plot_metrics")
    metrics = tmp_path / "metrics.json"
    lines = [
        {"iteration": 19, "total_loss": 2.0, "loss_fcos_cls": 1.0, "loss_mask": 1.0, "lr": 0.01},
        {"iteration": 39, "total_loss": 1.0, "loss_fcos_cls": 0.5, "loss_mask": 0.5, "lr": 0.01,
         "bbox/AP": 10.0, "segm/AP": 8.0},
        {"iteration": 40, "bbox/AP": 12.0, "segm/AP": float("nan")},
    ]
    metrics.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    assert plot_metrics.main([str(metrics)]) == 0
    png = tmp_path / "metrics.png"
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.std() > 5
    data = plot_metrics.series(plot_metrics.load_metrics(str(metrics)))
    assert data["bbox/AP"] == ([39, 40], [10.0, 12.0])
    assert data["segm/AP"] == ([39], [8.0])  # NaN (no instances of that size) is skipped
    assert plot_metrics.plot(plot_metrics.load_metrics(str(metrics)), str(png)) == [
        "loss_fcos_cls", "loss_mask", "total_loss", "lr", "bbox/AP", "segm/AP",
    ]

    metrics.write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.json:2 is not a JSON object"):
        plot_metrics.main([str(metrics)])
