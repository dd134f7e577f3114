"""Our CondInst against AdelaiDet's, in detectron2: same R-50 config (AdelaiDet's own YAML), same
weights through the state_dict, same batch of two images of different sizes mapped by
detectron2's DatasetMapper -> same losses, gradients and detections; and our perceptual head on
AdelaiDet's CondInst against our own CondInst with it."""

import copy

import pytest
import torch

from .d2_helpers import ADELAIDET_SKIP_REASON, SKIP_REASON, adelaidet_config, mapped_batch
from .d2_helpers import register_polygon_dataset

pytest.importorskip("detectron2", reason=SKIP_REASON)
pytest.importorskip("adet", reason=ADELAIDET_SKIP_REASON)

import condinst_percep.d2  # noqa: E402,F401  registers CondInstPercep
import condinst_percep.d2.adelaidet  # noqa: E402,F401  registers CondInstPercepAdelaiDet
from detectron2.modeling import build_model  # noqa: E402

PERCEP = (
    "MODEL.PERCEP.ENABLED", True, "MODEL.CONDINST.MASK_HEAD.NAME", "PercepMaskHead",
    "MODEL.PERCEP.STRUCTURE", (1, 1, 1, 1, 1), "MODEL.PERCEP.WIDTHS", (8, 16, 32, 64, 64),
    "MODEL.PERCEP.LOSS_WEIGHT", 1.0,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return register_polygon_dataset("d2_parity_polygons", str(tmp_path_factory.mktemp("poly")), 2)


def shared_weights(model) -> dict:
    """AdelaiDet's initialisation, with the classification prior raised and the controller's
    weights spread, so that inference keeps detections whose masks are neither empty nor full."""
    sd = copy.deepcopy(model.state_dict())
    sd["proposal_generator.fcos_head.cls_logits.bias"].fill_(-1.0)
    sd["controller.weight"].normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return sd


def build_pair(cfg, theirs_arch="CondInst", ours_arch="CondInstPercep"):
    """(AdelaiDet's model, ours), both holding the same weights as loaded."""
    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = theirs_arch
    torch.manual_seed(0)
    theirs = build_model(cfg)
    sd = shared_weights(theirs)
    theirs.load_state_dict(sd)
    cfg.MODEL.META_ARCHITECTURE = ours_arch
    ours = build_model(cfg)
    ours.load_state_dict(sd, strict=True)
    return theirs, ours


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are 0)."""
    scale = float(b.double().norm())
    diff = float((a.double() - b.double()).norm())
    return diff / scale if scale else diff


def train_step(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # MAX_PROPOSALS 500 samples positives with torch.randperm
    losses = model(copy.deepcopy(batch))
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same_training(theirs, ours, batch, expected_losses):
    l_theirs, g_theirs = train_step(theirs, batch)
    l_ours, g_ours = train_step(ours, batch)
    assert sorted(l_theirs) == sorted(l_ours) == sorted(expected_losses)
    for k in l_theirs:
        assert relative(l_ours[k], l_theirs[k]) <= 1e-5, (k, l_ours[k], l_theirs[k])
        assert float(l_theirs[k]) > 0, k
    assert sorted(g_theirs) == sorted(g_ours)
    for name, g in g_theirs.items():
        assert (g is None) == (g_ours[name] is None), name
        if g is not None:
            assert relative(g_ours[name], g) <= 1e-4, (name, relative(g_ours[name], g))
    # Gradients reach the whole model, but for the box scales of FPN levels without positives
    # (the test's objects are small), in both models alike.
    zero = {n for n, g in g_theirs.items() if g is None or not bool(g.abs().sum() > 0)}
    assert zero == {n for n, g in g_ours.items() if g is None or not bool(g.abs().sum() > 0)}
    assert all(".fcos_head.scales." in n for n in zero), zero


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_losses_and_gradients_match_adelaidet(dataset, mask_format):
    cfg = adelaidet_config("CondInst/MS_R_50_1x.yaml", "INPUT.MASK_FORMAT", mask_format)
    batch = mapped_batch(cfg, dataset, is_train=True)
    assert batch[0]["image"].shape != batch[1]["image"].shape
    kind = "PolygonMasks" if mask_format == "polygon" else "BitMasks"
    assert all(type(x["instances"].gt_masks).__name__ == kind for x in batch)
    theirs, ours = build_pair(cfg)
    expected = ["loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"]
    assert_same_training(theirs, ours, batch, expected)


def test_detections_match_adelaidet_on_weights_as_loaded(dataset):
    """Eval mode before any training forward (which moves the mask branch's BN statistics).
    One image per call: AdelaiDet's CondInst cannot run inference on a batch of images of
    different sizes (detectron2's Instances.cat asserts one image size)."""
    cfg = adelaidet_config()
    theirs, ours = build_pair(cfg)
    theirs.eval()
    ours.eval()
    for x in mapped_batch(cfg, dataset, is_train=False):
        with torch.no_grad():
            a = theirs([copy.deepcopy(x)])[0]["instances"]
            b = ours([copy.deepcopy(x)])[0]["instances"]
        assert b.image_size == a.image_size == (x["height"], x["width"])
        assert len(b) == len(a) > 10
        assert type(b.pred_boxes).__name__ == "Boxes"
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-6, atol=1e-4)
        assert torch.equal(b.pred_classes, a.pred_classes)
        assert b.pred_masks.dtype == torch.bool
        assert torch.equal(b.pred_masks, a.pred_masks > 0.5)
        # Masks with edges to get right: some neither empty nor full.
        coverage = b.pred_masks.float().mean(dim=(1, 2))
        assert bool(((coverage > 0.01) & (coverage < 0.95)).any()), coverage


def write_teacher(tmp_path, cfg, weights: dict, config: str = "CondInst/MS_R_50_1x.yaml") -> list:
    """A teacher config (AdelaiDet's ``config`` YAML, our 4 classes) and a checkpoint of
    ``weights``; returns the student's options that name them."""
    import os

    import adet

    base = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs", config)
    config_file = tmp_path / "teacher.yaml"
    config_file.write_text(
        f'_BASE_: "{base}"\nMODEL:\n  WEIGHTS: ""\n  DEVICE: "cpu"\n  FCOS:\n    NUM_CLASSES: 4\n'
    )
    torch.save({"model": weights}, tmp_path / "teacher.pth")
    return ["MODEL.PERCEP.TARGET", "teacher", "MODEL.TEACHER.CONFIG_FILE", str(config_file),
            "MODEL.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth")]


@pytest.mark.parametrize("target", ["gt", "teacher"])
def test_percep_head_on_adelaidet_condinst_matches_ours(dataset, target, tmp_path):
    opts = list(PERCEP)
    if target == "teacher":
        torch.manual_seed(5)
        teacher_weights = shared_weights(build_model(adelaidet_config()))
        opts += write_teacher(tmp_path, adelaidet_config(), teacher_weights)
    else:
        opts += ["MODEL.PERCEP.TARGET", "gt"]
    cfg = adelaidet_config("CondInst/MS_R_50_1x.yaml", *opts)
    batch = mapped_batch(cfg, dataset, is_train=True)
    theirs, ours = build_pair(cfg, theirs_arch="CondInstPercepAdelaiDet")
    assert type(theirs.mask_head).__name__ == "PercepDynamicMaskHead"
    assert type(ours.mask_head).__name__ == "PercepMaskHead"
    assert (theirs.mask_head.percep.teacher is not None) == (target == "teacher")
    expected = ["loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_percep"]
    assert_same_training(theirs, ours, batch, expected)


def test_percep_adelaidet_state_dict_is_adelaidets():
    cfg = adelaidet_config("CondInst/MS_R_50_1x.yaml", *PERCEP, "MODEL.PERCEP.TARGET", "gt")
    models = []
    for arch in ("CondInst", "CondInstPercepAdelaiDet"):
        cfg.MODEL.META_ARCHITECTURE = arch
        torch.manual_seed(0)
        models.append(build_model(cfg))
    plain, percep = (m.state_dict() for m in models)
    assert list(percep) == list(plain)
    assert len(plain) == 372
    for k in plain:
        assert torch.equal(percep[k], plain[k]), k
    # The loss network and the teacher are outside the module tree: nothing for the optimizer.
    assert sum(p.numel() for p in models[1].parameters()) == sum(p.numel() for p in models[0].parameters())
