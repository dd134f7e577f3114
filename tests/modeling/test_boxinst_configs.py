"""Every AdelaiDet BoxInst config (our copies in configs/BoxInst/, checked equal to the vendor
snapshot's) loads, builds and trains a few iterations at tiny widths on the CPU, the BiFPN and
dcni3 ones included."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data.shapes import render_scene
from condinst_percep.modeling import build_model
from condinst_percep.modeling.backbone.resnet import DeformBottleneckBlock
from condinst_percep.structures import Instances

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "BoxInst"
MODEL_CONFIGS = sorted(p.name for p in CONFIGS.glob("MS_*.yaml"))
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 1,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 32, "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
    "MODEL.FCOS.NUM_CLASSES", 4, "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 2,
]


def load(name: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list([str(x) for x in (*TINY, *opts)])
    return cfg


def box_batch(seed: int = 0) -> list[dict]:
    import numpy as np

    batch = []
    for i in range(2):
        rng = np.random.default_rng([seed, i])
        image, classes, _, visible = render_scene(rng, 64, 80, 3)
        boxes = [[m.nonzero()[1].min(), m.nonzero()[0].min(), m.nonzero()[1].max() + 1.0,
                  m.nonzero()[0].max() + 1.0] for m in visible]
        inst = Instances(
            (64, 80), gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            gt_classes=torch.tensor(classes, dtype=torch.int64),
        )
        image = torch.from_numpy(image.transpose(2, 0, 1).copy())
        batch.append({"image": image, "height": 64, "width": 80, "instances": inst})
    return batch


def train_steps(model, steps: int = 3) -> list[dict[str, float]]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(box_batch())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def test_the_copies_are_adelaidets(shared_dir):
    with tarfile.open(shared_dir / "vendor" / "AdelaiDet-3672122.tar.gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()
                   if "/configs/BoxInst/" in f"/{m.name}" and m.name.endswith(".yaml")}
        assert sorted(members) == sorted(p.name for p in CONFIGS.glob("*.yaml"))
        for name, member in members.items():
            assert tar.extractfile(member).read() == (CONFIGS / name).read_bytes(), name
    assert len(MODEL_CONFIGS) == 8


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_boxinst_config_builds_and_trains(name):
    cfg = load(name)
    assert cfg.MODEL.BOXINST.ENABLED
    model = build_model(cfg)
    history = train_steps(model)
    assert set(history[0]) == {
        "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_prj", "loss_pairwise"
    }
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    # The pairwise term ramps in over WARMUP_ITERS = 2 calls; the mask head counted them.
    assert model.mask_head._iter.item() == 3
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"]} for x in box_batch()])
    assert out[0]["instances"].pred_masks.shape[-2:] == (64, 80)


def test_dcni3_deforms_every_third_block_and_its_offsets_learn():
    """MS_R_101_BiFPN_dcni3_3x: DCNv2 in blocks 0, 3, ... of res3-res5 of its R-101 (2 + 8 +
    1 blocks) under the BiFPN; after training the zero-initialised offsets have moved."""
    cfg = load("MS_R_101_BiFPN_dcni3_3x.yaml")
    model = build_model(cfg)
    blocks = [m for m in model.modules() if isinstance(m, DeformBottleneckBlock)]
    assert len(blocks) == 2 + 8 + 1
    history = train_steps(model)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert blocks[0].conv2_offset.weight.abs().sum() > 0


def test_boxinst_with_the_perceptual_loss_against_a_boxinst_teacher(tmp_path):
    """configs/Quickstart/BoxInst-Percep-Teacher_shapes.yaml: BoxInst's losses plus
    ``loss_percep`` against a frozen BoxInst teacher, no GT mask anywhere."""
    quickstart = CONFIGS.parent / "Quickstart"
    teacher_cfg = get_cfg()
    teacher_cfg.merge_from_file(str(quickstart / "BoxInst_shapes.yaml"))
    torch.manual_seed(1)
    torch.save({"model": build_model(teacher_cfg).state_dict()}, tmp_path / "teacher.pth")
    cfg = get_cfg()
    cfg.merge_from_file(str(quickstart / "BoxInst-Percep-Teacher_shapes.yaml"))
    cfg.merge_from_list([
        "MODEL.TEACHER.CONFIG_FILE", str(quickstart / "BoxInst_shapes.yaml"),
        "MODEL.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"),
    ])
    model = build_model(cfg)
    history = train_steps(model, steps=2)
    assert set(history[0]) == {
        "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_prj", "loss_pairwise",
        "loss_percep",
    }
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert history[0]["loss_percep"] > 0
