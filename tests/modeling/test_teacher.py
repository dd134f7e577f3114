"""The perceptual CondInst with a teacher (MODEL.PERCEP.TARGET "teacher"): the soft masks it
gives, gradients that reach the student only, its precision under autocast, checkpoints that are
plain CondInsts, and teachers refused by name."""
import pytest
import torch

from condinst_percep.checkpoint import CheckpointMismatchError, Checkpointer
from condinst_percep.modeling import build_model
from tests.conftest import tiny_cfg
from tests.modeling.references import naive_mask_logits
from tests.percep_helpers import STUDENT, make_batch, tiny_percep_cfg, write_teacher


def test_teacher_soft_masks_equal_its_own_head_at_those_locations(teacher_files):
    cfg = tiny_percep_cfg("teacher", *teacher_files)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    head = model.mask_head
    seen = {}
    original = head.perceptual_loss

    def record(logits, instances, gt_instances, images=None):
        seen.update(instances=instances, images=images)
        return original(logits, instances, gt_instances, images)

    head.perceptual_loss = record
    model(make_batch())
    instances, images = seen["instances"], seen["images"]
    assert len(instances) == 9
    got = head.teacher_soft_masks(images, instances)

    teacher = head.teacher
    assert not teacher.training
    with torch.no_grad():
        feats = teacher.backbone(images)
        levels = [feats[f] for f in teacher.proposal_generator.in_features]
        _, _, _, top_feats = teacher.proposal_generator.fcos_head(levels, teacher.controller)
        strides = teacher.proposal_generator.fpn_strides
        params = torch.stack([
            top_feats[lvl][b, :, int(y) // strides[lvl], int(x) // strides[lvl]]
            for (x, y), b, lvl in zip(instances.locations.tolist(), instances.im_inds.tolist(),
                                      instances.fpn_levels.tolist())
        ])
        mask_feats = teacher.mask_branch(feats)
        expected = naive_mask_logits(params, instances.locations, instances.im_inds,
                                     instances.fpn_levels, mask_feats, 8,
                                     list(cfg.MODEL.FCOS.SIZES_OF_INTEREST) + [1024]).sigmoid()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # The teacher is another network: its masks are not the student's.
    assert not torch.allclose(got, model.mask_head.mask_logits(
        model.mask_branch(model.backbone(images)), 8, instances).sigmoid(), atol=1e-3)


def test_only_loss_percep_reaches_the_student_never_the_teacher(teacher_files):
    model = build_model(tiny_percep_cfg("teacher", *teacher_files)).train()
    losses = model(make_batch())
    assert float(losses["loss_percep"]) > 0
    losses["loss_percep"].backward()
    assert model.controller.weight.grad.abs().sum() > 0
    branch = [p.grad for p in model.mask_branch.parameters()]
    assert all(g is not None for g in branch) and sum(g.abs().sum() for g in branch) > 0
    assert model.proposal_generator.fcos_head.cls_logits.weight.grad is None
    assert all(p.grad is None and not p.requires_grad for p in model.mask_head.teacher.parameters())


def test_training_under_bf16_autocast_runs_the_teacher_in_bf16(teacher_files):
    model = build_model(tiny_percep_cfg("teacher", *teacher_files)).train()
    teacher = model.mask_head.teacher
    dtypes = []
    teacher.mask_branch.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_batch())
    assert dtypes == [torch.bfloat16]
    assert next(teacher.parameters()).dtype == torch.float32
    assert torch.isfinite(losses["loss_percep"]) and losses["loss_percep"].dtype == torch.float32


@pytest.mark.parametrize(
    "teacher_autocast,student_autocast,teacher_dtype",
    [("bfloat16", None, torch.bfloat16), ("float32", torch.bfloat16, torch.float32)],
)
def test_teacher_autocast_sets_the_teachers_precision_alone(
    teacher_files, teacher_autocast, student_autocast, teacher_dtype
):
    cfg = tiny_percep_cfg("teacher", *teacher_files, **{"MODEL.TEACHER.AUTOCAST": teacher_autocast})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    reference = build_model(tiny_percep_cfg("teacher", *teacher_files)).train()
    reference.load_state_dict(model.state_dict())
    dtypes = {}
    model.mask_head.teacher.mask_branch.register_forward_hook(
        lambda m, i, out: dtypes.update(teacher=out.dtype))
    model.mask_branch.register_forward_hook(lambda m, i, out: dtypes.update(student=out.dtype))
    with torch.autocast("cpu", dtype=student_autocast or torch.float32,
                        enabled=student_autocast is not None):
        torch.manual_seed(1)
        got = model(make_batch())["loss_percep"]
        torch.manual_seed(1)
        expected = reference(make_batch())["loss_percep"]
    assert dtypes == {"teacher": teacher_dtype, "student": student_autocast or torch.float32}
    # Other soft targets, so another (close) loss.
    assert got != expected
    torch.testing.assert_close(got, expected, rtol=0.1, atol=0)


def test_state_dict_optimizer_inference_and_checkpoint_are_plain_condinsts(teacher_files, tmp_path):
    cfg = tiny_percep_cfg("teacher", *teacher_files)
    ours = build_model(cfg)
    plain_cfg = tiny_cfg(**STUDENT)
    plain = build_model(plain_cfg)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in plain.named_parameters()]
    hidden = {id(t) for t in ours.mask_head.teacher.parameters()}
    hidden |= {id(t) for t in ours.mask_head.percep_loss.net.buffers()}
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not hidden & in_optimizer
    assert not hidden & {id(b) for b in ours.buffers()}

    ours.train()
    ours(make_batch())["loss_percep"].backward()
    optimizer.step()
    Checkpointer(ours, str(tmp_path)).save("student")
    report_model = build_model(plain_cfg)
    checkpointer = Checkpointer(report_model, str(tmp_path))
    checkpointer.load(str(tmp_path / "student.pth"))
    report = checkpointer.last_report
    assert not report.unexpected and not report.missing and not report.mismatched

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher or the loss network ran at inference")

    ours.mask_head.teacher.mask_logits_on = refuse
    ours.mask_head.percep_loss.forward = refuse
    batch = make_batch(with_instances=False)
    with torch.no_grad():
        a = ours.eval()(batch)
        b = report_model.eval()(batch)
    for x, y in zip(a, b):
        fx, fy = x["instances"].get_fields(), y["instances"].get_fields()
        assert fx.keys() == fy.keys() and len(x["instances"]) > 0
        assert all(torch.equal(fx[k], fy[k]) for k in fx)


def test_teacher_follows_the_student_and_stays_frozen_in_train_mode(teacher_files):
    model = build_model(tiny_percep_cfg("teacher", *teacher_files))
    model.train()
    teacher = model.mask_head.teacher
    assert not any(m.training for m in teacher.modules())
    model.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64
    assert teacher.pixel_mean.dtype == torch.float64


@pytest.mark.parametrize(
    "teacher_change, message",
    [
        (
            {"MODEL.FCOS.IN_FEATURES": ["p3", "p4", "p5", "p6"], "MODEL.FCOS.TOP_LEVELS": 1,
             "MODEL.FCOS.FPN_STRIDES": [8, 16, 32, 64], "MODEL.FCOS.SIZES_OF_INTEREST": [64, 128, 256]},
            "MODEL.FCOS.FPN_STRIDES: teacher [8, 16, 32, 64] vs student [8, 16, 32, 64, 128]",
        ),
        ({"MODEL.CONDINST.MASK_OUT_STRIDE": 8}, "MODEL.CONDINST.MASK_OUT_STRIDE: teacher 8 vs student 4"),
        ({"MODEL.PIXEL_STD": [57.0, 57.0, 58.0]}, "MODEL.PIXEL_STD: teacher"),
        ({"INPUT.FORMAT": "RGB"}, "INPUT.FORMAT: teacher 'RGB' vs student 'BGR'"),
    ],
)
def test_incompatible_teacher_is_refused_by_name(tmp_path, teacher_change, message):
    config_file, weights = write_teacher(tmp_path, **teacher_change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_model(tiny_percep_cfg("teacher", config_file, weights))


def test_missing_or_partial_teacher_weights_fail_loudly(tmp_path, teacher_files):
    config_file, weights = teacher_files
    with pytest.raises(FileNotFoundError, match="train MODEL.TEACHER.CONFIG_FILE"):
        build_model(tiny_percep_cfg("teacher", config_file, str(tmp_path / "model_final.pth")))
    state = torch.load(weights, weights_only=True)["model"]
    partial = tmp_path / "backbone_only.pth"
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, partial)
    with pytest.raises(CheckpointMismatchError, match="does not hold the whole teacher"):
        build_model(tiny_percep_cfg("teacher", config_file, str(partial)))
