"""Same weights, same batch through AdelaiDet's CondInst/BoxInst and ours (the peer environment:
``bash tools/peer_env.sh --python``): losses, gradients and detections side by side.

detectron2's deformable convolutions have CUDA kernels only ("not supported on CPUs");
:func:`deform_conv_on_cpu` stands torchvision's compiled CPU op in for them (the same
semantics: test_boxinst_dcn_parity.py checks it against our op, and tests/layers/
test_deform_conv.py ours against the kernels' rules).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def adelaidet_model(config: str, opts: list):
    """AdelaiDet's model for ``configs/<config>`` (our copy of its YAML) with ``opts``."""
    pytest.importorskip("adet", reason="AdelaiDet is not importable (peer environment only)")
    from adet.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.merge_from_list([str(x) for x in opts])
    return build_model(cfg)


def our_model(config: str, opts: list):
    from condinst_percep.config import get_cfg
    from condinst_percep.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.merge_from_list([str(x) for x in opts])
    return build_model(cfg)


def scene_batch(sizes, seed: int = 0):
    """Shapes scenes (smooth backgrounds, so the LAB similarity has both sides of the
    threshold), their visible parts' boxes and masks (BoxInst reads no masks), and an original
    ``height`` twice the input's (the bottom-pixel removal scales with it). Returns (ours,
    AdelaiDet's) batches."""
    from detectron2.structures import BitMasks, Boxes
    from detectron2.structures import Instances as D2Instances

    from condinst_percep.data.shapes import render_scene
    from condinst_percep.structures import Instances

    ours, theirs = [], []
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng([seed, i])
        image, classes, _, visible = render_scene(rng, h, w, 4)
        boxes = []
        for vis in visible:
            ys, xs = np.nonzero(vis)
            boxes.append([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0])
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(classes, dtype=torch.int64)
        masks = torch.from_numpy(np.stack(visible)).reshape(-1, h, w)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        common = {"image": tensor, "height": 2 * h, "width": 2 * w}
        ours.append(dict(common, instances=Instances(
            (h, w), gt_boxes=boxes, gt_classes=labels, gt_masks=masks
        )))
        theirs.append(dict(common, instances=D2Instances(
            (h, w), gt_boxes=Boxes(boxes.clone()), gt_classes=labels, gt_masks=BitMasks(masks)
        )))
    return ours, theirs


def share_weights(theirs: torch.nn.Module, ours: torch.nn.Module, seed: int = 0) -> None:
    """Loads AdelaiDet's initial weights into ours, key for key, after giving every constant
    parameter (zero-initialised offsets and biases, the class prior) random values, so that
    offsets are non-zero (about a pixel) and no term is at a special point."""
    gen = torch.Generator().manual_seed(seed)
    state = theirs.state_dict()
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if key in params and "norm" not in key and bool((value == value.flatten()[0]).all()):
                value.add_(0.02 * torch.randn(value.shape, generator=gen))
    theirs.load_state_dict(state)
    ours.load_state_dict(state, strict=True)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale else diff


@contextlib.contextmanager
def deform_conv_on_cpu():
    """detectron2's DeformConv / ModulatedDeformConv forward through torchvision's CPU op."""
    ops = pytest.importorskip("torchvision.ops")
    from detectron2.layers import deform_conv as d2

    def run(self, x, offset, mask=None):
        out = ops.deform_conv2d(
            x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, mask=mask,
        )
        if self.norm is not None:
            out = self.norm(out)
        return out if self.activation is None else self.activation(out)

    saved = d2.DeformConv.forward, d2.ModulatedDeformConv.forward
    d2.DeformConv.forward = lambda self, x, offset: run(self, x, offset)
    d2.ModulatedDeformConv.forward = lambda self, x, offset, mask: run(self, x, offset, mask)
    try:
        yield
    finally:
        d2.DeformConv.forward, d2.ModulatedDeformConv.forward = saved


def compare_training_step(config: str, opts: list, sizes) -> dict[str, float]:
    """Builds both models from the same config, shares weights, runs one training forward and
    backward on the same batch; returns the largest relative errors of the losses and of the
    gradients (and asserts the loss names and parameter names are the same)."""
    theirs = adelaidet_model(config, opts)
    ours = our_model(config, opts)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    share_weights(theirs, ours)
    ours_batch, theirs_batch = scene_batch(sizes)
    theirs.train()
    ours.train()
    their_losses = theirs(theirs_batch)
    our_losses = ours(ours_batch)
    assert sorted(our_losses) == sorted(their_losses)
    loss_err = max(relative_error(our_losses[k], their_losses[k]) for k in their_losses)
    sum(their_losses.values()).backward()
    sum(our_losses.values()).backward()
    ours_params = dict(ours.named_parameters())
    grad_err = 0.0
    for name, p in theirs.named_parameters():
        q = ours_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            grad_err = max(grad_err, relative_error(q.grad, p.grad))
    return {
        "loss": loss_err,
        "grad": grad_err,
        "losses": {k: float(v.detach()) for k, v in their_losses.items()},
        "models": (theirs, ours),
    }


def compare_detections(theirs, ours, sizes) -> int:
    """Eval-mode detections on the same batch must be identical (boxes and scores to float
    rounding, classes and masks exactly); returns how many there were."""
    ours_batch, theirs_batch = scene_batch(sizes)
    for batch in (ours_batch, theirs_batch):
        for x in batch:
            x.pop("instances")
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        their_out = theirs(theirs_batch)
        our_out = ours(ours_batch)
    count = 0
    for a, b in zip(our_out, their_out):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b)
        count += len(a)
        torch.testing.assert_close(a.pred_boxes, b.pred_boxes.tensor, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks.bool())
    return count
