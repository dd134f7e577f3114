"""The perceptual-loss configs on the '_sem' and BiFPN models: each is MS_R_50_1x_gt plus exactly
AdelaiDet's keys for that model, and trains with loss_percep next to the semantic loss."""
import os

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.modeling import build_model
from condinst_percep.structures import Instances

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.BiFPN.OUT_CHANNELS", 64,
    "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 1, "MODEL.FCOS.NUM_CLASSES", 3,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 16, "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
    "MODEL.PERCEP.WIDTHS", (8, 16, 32, 64, 64), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
]


def load(path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", path))
    cfg.merge_from_list(list(opts))
    return cfg


def leaves(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize(
    "name, adelaidet",
    [("MS_R_50_1x_sem_gt", "MS_R_50_3x_sem"), ("MS_R_50_BiFPN_1x_gt", "MS_R_50_BiFPN_1x")],
)
def test_config_is_the_gt_config_plus_adelaidets_model_keys(name, adelaidet):
    ours, gt = leaves(load(f"CondInst-Percep/{name}.yaml")), leaves(load("CondInst-Percep/MS_R_50_1x_gt.yaml"))
    theirs, plain = leaves(load(f"CondInst/{adelaidet}.yaml")), leaves(load("CondInst/MS_R_50_1x.yaml"))
    model_keys = {k for k in theirs if k.startswith("MODEL.") and theirs[k] != plain[k]}
    assert {k for k in ours if ours[k] != gt[k]} == model_keys | {"OUTPUT_DIR"}
    assert all(ours[k] == theirs[k] for k in model_keys)


def batch():
    out = []
    for h, w in ((96, 128), (128, 96)):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 10:60, 20:80] = True
        masks[1, 40:90, 30:70] = True
        boxes = torch.tensor([[20.0, 10.0, 80.0, 60.0], [30.0, 40.0, 70.0, 90.0]])
        inst = Instances((h, w), gt_boxes=boxes, gt_classes=torch.tensor([0, 2]), gt_masks=masks)
        out.append({"image": image, "instances": inst})
    return out


@pytest.mark.parametrize("name", ["MS_R_50_1x_sem_gt", "MS_R_50_BiFPN_1x_gt"])
def test_percep_loss_trains_on_the_model(name):
    model = build_model(load(f"CondInst-Percep/{name}.yaml", *map(str, NARROW)))
    model.train()
    losses = model(batch())
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_percep"}
    assert set(losses) == expected | ({"loss_sem"} if "_sem" in name else set())
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss_percep"].backward()
    # The perceptual loss reaches the ResNet through the pyramid and the mask branch.
    (res3,) = [p for n, p in model.backbone.named_parameters() if n.endswith("res3.0.conv1.weight")]
    assert res3.grad is not None and res3.grad.abs().sum() > 0
