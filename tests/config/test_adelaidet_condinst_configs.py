"""Every CondInst model config of AdelaiDet (our copies in configs/CondInst/) loads, builds and
trains a few iterations through train_net, with widths shrunk (depths and structure kept) and
a generated shapes set, on the CPU."""
import json
import os
import tarfile

import pytest
import torch

from condinst_percep.data import generate_shapes
from tests.conftest import REPO
from tests.train_helpers import one_thread, run_main

CONFIG_DIR = os.path.join(REPO, "configs", "CondInst")
CONFIGS = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.startswith("MS_") and f.endswith(".yaml"))

# Narrow widths, same depth and layout: bottlenecks of width 4-32, 64-channel pyramid.
# Batch-statistics BN in the ResNet: with random weights and FrozenBN at identity statistics
# (no ImageNet weights here), a narrow R-101's activations grow until its gradients overflow.
NARROW = [
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.BiFPN.OUT_CHANNELS", 64,
    "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 1,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 16, "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
]


def test_our_copies_are_adelaidets_11(shared_dir):
    (tarball,) = (shared_dir / "vendor").glob("AdelaiDet-*.tar.gz")
    with tarfile.open(tarball) as tar:
        theirs = {
            os.path.basename(m.name)[:-5]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if "/configs/CondInst/MS_" in m.name and m.name.endswith(".yaml")
        }
    assert sorted(theirs) == CONFIGS and len(CONFIGS) == 11
    for name, content in theirs.items():
        with open(os.path.join(CONFIG_DIR, f"{name}.yaml"), "rb") as f:
            assert f.read() == content, name


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    json_file = generate_shapes(str(root), num_images=4, min_size=64, max_size=80, seed=0, max_objects=2)
    return f"coco:{json_file}:{root / 'images'}"


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains(name, shapes, tmp_path):
    opts = NARROW + [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.FCOS.NUM_CLASSES", 4,
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 96,
        "DATASETS.TRAIN", f"('{shapes}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1,
        "OUTPUT_DIR", str(tmp_path),
    ]
    with one_thread():
        run_main([str(x) for x in opts], config=os.path.join(CONFIG_DIR, f"{name}.yaml"))
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    losses = {k: v for k, v in records[-1].items() if k.startswith("loss_")}
    assert records[-1]["iteration"] == 2
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert set(losses) == expected | ({"loss_sem"} if name.endswith("_sem") else set())
    assert all(0 < v < float("inf") for v in losses.values())
    keys = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"].keys()
    assert any(k.startswith("mask_branch.seg_head.") for k in keys) == name.endswith("_sem")
    assert any(k.startswith("backbone.repeated_bifpn.5.") for k in keys) == ("BiFPN" in name)
    depth = 101 if "R_101" in name else 50
    assert any(".res4.22." in k for k in keys) == (depth == 101)
