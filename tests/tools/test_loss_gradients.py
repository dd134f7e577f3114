"""tools/loss_gradients.py: each loss term's gradient norm, ratio and cosine, per module, on a
tiny model with the perceptual loss (generated shapes, no training)."""
import math

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_train_loader
from condinst_percep.modeling import build_model
from tests.conftest import REPO, load_tool
from tests.train_helpers import make_shapes, one_thread, tiny_opts

PERCEP_CONFIG = str(REPO / "configs/Quickstart/CondInst-Percep_shapes.yaml")


def _opts(tmp_path, **extra) -> list[str]:
    opts = tiny_opts(make_shapes(tmp_path / "data"), tmp_path / "out", **extra)
    # bfloat16 autocast would make the closed-form checks below approximate.
    return [*opts, "MODEL.PERCEP.AUTOCAST", "", "MODEL.PERCEP.CHANNELS_LAST", "False"]


def test_per_term_gradients_add_up_to_the_total_loss_gradient(tmp_path):
    tool = load_tool("loss_gradients")
    cfg = get_cfg()
    cfg.merge_from_file(PERCEP_CONFIG)
    cfg.merge_from_list(_opts(tmp_path))
    with one_thread():
        torch.manual_seed(0)
        model = build_model(cfg).train()
        batch = next(iter(build_detection_train_loader(cfg)))
        grads = tool.batch_gradients(model, batch)
        assert {"loss_mask", "loss_percep", "loss_fcos_cls"} <= set(grads)
        params = [p for _, p in tool.trainable(model)]
        total = torch.autograd.grad(sum(model(batch).values()), params, allow_unused=True)
    for i, p in enumerate(params):
        summed = sum(g[i] for g in grads.values() if g[i] is not None)
        if total[i] is None:
            assert isinstance(summed, int)  # no term reaches it
        else:
            torch.testing.assert_close(summed, total[i], rtol=1e-5, atol=1e-7)
    # The classification loss does not reach the mask branch; the perceptual loss does.
    names = [n for n, _ in tool.trainable(model)]
    branch = [i for i, n in enumerate(names) if n.startswith("mask_branch.")]
    assert branch and all(grads["loss_fcos_cls"][i] is None for i in branch)
    assert any(grads["loss_percep"][i] is not None and grads["loss_percep"][i].abs().sum() > 0
               for i in branch)


def test_summary_scales_with_the_loss_weight(tmp_path):
    tool = load_tool("loss_gradients")
    base = ["--config-file", PERCEP_CONFIG, "--batches", "2"]
    with one_thread():
        rows = tool.main([*base, *_opts(tmp_path)])
        doubled = tool.main([*base, *_opts(tmp_path), "MODEL.PERCEP.LOSS_WEIGHT",
                             str(2 * get_cfg().MODEL.PERCEP.LOSS_WEIGHT)])
    by_key = {(r["group"], r["loss"]): r for r in rows}
    doubled_by_key = {(r["group"], r["loss"]): r for r in doubled}
    for (group, loss), row in by_key.items():
        other = doubled_by_key[(group, loss)]
        factor = 2.0 if loss == "loss_percep" else 1.0
        # A linear factor on one term: its gradient doubles, the cosines do not move.
        assert other["norm"] == pytest.approx(factor * row["norm"], rel=1e-6, abs=1e-12)
        if not math.isnan(row["cosine"]):
            assert other["cosine"] == pytest.approx(row["cosine"], abs=1e-6)
    mask = by_key[("all", "loss_mask")]
    assert mask["ratio"] == pytest.approx(1.0) and mask["cosine"] == pytest.approx(1.0)
    assert by_key[("all", "loss_percep")]["norm"] > 0
    # Zero gradient: no cosine (NaN), not a made-up 0.
    assert math.isnan(by_key[("mask_branch", "loss_fcos_cls")]["cosine"])


def test_unknown_reference_is_named(tmp_path):
    tool = load_tool("loss_gradients")
    with one_thread(), pytest.raises(ValueError, match="--reference 'loss_dice' is not one of"):
        tool.main(["--config-file", PERCEP_CONFIG, "--batches", "1", "--reference", "loss_dice",
                   *_opts(tmp_path)])
