"""Our perceptual head on AdelaiDet's BoxInst (``CondInstPercepAdelaiDet`` with
``MODEL.BOXINST.ENABLED``): AdelaiDet's projection and pairwise losses plus ``loss_percep``
against a frozen BoxInst teacher loaded from a checkpoint file, no mask target anywhere. Held
against our own CondInst BoxInst with ``PercepMaskHead`` and the same teacher (same weights,
same batch: every loss within 1e-5, every gradient within 1e-4 relative), trained by
detectron2's DefaultTrainer, zero losses on the graph without instances, and
``MODEL.PERCEP.TARGET 'gt'`` refused with the reason."""

import os

import numpy as np
import pytest
import torch

from ..conftest import load_tool
from .d2_helpers import ADELAIDET_SKIP_REASON, SKIP_REASON, adelaidet_config, mapped_batch
from .d2_helpers import register_polygon_dataset

pytest.importorskip("detectron2", reason=SKIP_REASON)
adet = pytest.importorskip("adet", reason=ADELAIDET_SKIP_REASON)

import condinst_percep.d2  # noqa: E402,F401  registers CondInstPercep
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from condinst_percep.config import UnsupportedConfigError  # noqa: E402
# Importing the AdelaiDet layer registers CondInstPercepAdelaiDet.
from condinst_percep.d2.adelaidet import PercepDynamicMaskHead  # noqa: E402

from .test_adelaidet_parity import PERCEP, assert_same_training, build_pair  # noqa: E402
from .test_adelaidet_parity import shared_weights, write_teacher  # noqa: E402

BOXINST = "BoxInst/MS_R_50_1x.yaml"
BOXINST_LOSSES = [
    "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_prj", "loss_pairwise", "loss_percep",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return register_polygon_dataset("d2_boxinst_percep", str(tmp_path_factory.mktemp("boxinst")), 2)


def boxinst_teacher(tmp_path) -> list:
    """Options naming a BoxInst teacher: AdelaiDet's BoxInst R-50 YAML and a checkpoint of
    AdelaiDet's initialisation drawn with another seed than the student's."""
    torch.manual_seed(5)
    weights = shared_weights(build_model(adelaidet_config(BOXINST)))
    return write_teacher(tmp_path, None, weights, config=BOXINST)


def test_boxinst_with_the_teacher_matches_ours(dataset, tmp_path):
    cfg = adelaidet_config(
        BOXINST, *PERCEP, *boxinst_teacher(tmp_path), "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 4
    )
    batch = mapped_batch(cfg, dataset, is_train=True)
    for x in batch:  # boxes only: neither model may read a mask
        x["instances"].remove("gt_masks")
    theirs, ours = build_pair(cfg, theirs_arch="CondInstPercepAdelaiDet")
    assert theirs.boxinst_enabled and ours.box_targets is not None
    assert theirs.mask_head.percep.teacher is not None and ours.mask_head.teacher is not None
    assert_same_training(theirs, ours, batch, BOXINST_LOSSES)


def test_boxinst_with_gt_targets_is_refused_with_the_reason():
    cfg = adelaidet_config(BOXINST, *PERCEP, "MODEL.PERCEP.TARGET", "gt")
    cfg.MODEL.META_ARCHITECTURE = "CondInstPercepAdelaiDet"
    with pytest.raises(
        UnsupportedConfigError,
        match=r"MODEL.PERCEP.TARGET = 'gt': BoxInst \(MODEL.BOXINST.ENABLED\) has no "
        r"ground-truth masks",
    ):
        build_model(cfg)


def test_no_sampled_instance_gives_zero_losses_still_connected(tmp_path):
    """No positive location in the batch: AdelaiDet's zero BoxInst losses, and loss_percep a
    zero on the same graph (the teacher does not run)."""
    head = PercepDynamicMaskHead(adelaidet_config(BOXINST, *PERCEP, *boxinst_teacher(tmp_path)))
    head.train()
    mask_feats = torch.randn(1, 16, 8, 8, requires_grad=True)
    params = torch.randn(0, head.num_gen_params, requires_grad=True)
    none = Instances((64, 64), gt_inds=torch.zeros(0, dtype=torch.int64), mask_head_params=params)
    gt = Instances((64, 64), gt_bitmasks=torch.zeros(1, 16, 16),
                   gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]])))
    losses = head(mask_feats, 8, none, [gt])
    assert sorted(losses) == ["loss_pairwise", "loss_percep", "loss_prj"]
    for name, value in losses.items():
        assert float(value) == 0.0 and value.requires_grad, name
    torch.autograd.backward(list(losses.values()))
    assert mask_feats.grad is not None and params.grad is not None


def test_default_trainer_trains_it_with_the_teacher_frozen(tmp_path):
    """Three iterations of detectron2's DefaultTrainer (tools/train_net_d2.py's Trainer) on a
    set registered in detectron2's DatasetCatalog, ``MODEL.MASK_ON False`` (detectron2's
    mapper reads no mask): BoxInst's losses and loss_percep every iteration, the student's
    weights move, the teacher's stay those of its checkpoint file, it gets no optimizer slot,
    and the checkpoint holds AdelaiDet's state_dict alone."""
    name = register_polygon_dataset(
        "d2_boxinst_percep_train", str(tmp_path / "data"), 4, seed=2, min_size=96, max_size=128
    )
    teacher_opts = boxinst_teacher(tmp_path)
    configs = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs")
    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(configs, BOXINST),
        "MODEL.META_ARCHITECTURE", "CondInstPercepAdelaiDet", *map(str, PERCEP), *teacher_opts,
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.MASK_ON", "False",
        "MODEL.FCOS.NUM_CLASSES", "4", "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", "2",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100",
        "TEST.EVAL_PERIOD", "0", "SEED", "0", "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    train_net = load_tool("train_net_d2")
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    model = trainer.model
    teacher = model.mask_head.percep.teacher
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()

    history = trainer.storage.histories()  # every iteration's (metrics.json: every 20th)
    assert "loss_mask" not in history
    for key in BOXINST_LOSSES:
        assert [it for _, it in history[key].values()] == [0, 1, 2], key
        assert all(np.isfinite(v) for v, _ in history[key].values()), key
    assert all(v > 0 for v, _ in history["loss_percep"].values())
    assert not torch.equal(model.state_dict()["controller.weight"], before["controller.weight"])

    saved = torch.load(tmp_path / "teacher.pth", weights_only=False)["model"]
    assert not teacher.training
    assert teacher.state_dict().keys() == saved.keys()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, saved[key]), key
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)["model"]
    assert list(final) == list(before) and len(final) == 372
