"""PercepMaskHead and the teacher: loss values, gradients, teacher targets, invariants."""
import pytest
import torch

from condinst_percep.checkpoint import CheckpointMismatchError, Checkpointer
from condinst_percep.config import UnsupportedConfigError, get_cfg
from condinst_percep.engine import validate_cfg
from condinst_percep.layers import aligned_bilinear
from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst import DynamicMaskHead, PercepMaskHead
from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.structures import Instances

from percep_helpers import make_batch, tiny_cfg, tiny_percep_cfg, write_teacher


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"MODEL.PERCEP.TARGET": "soft"}, "MODEL.PERCEP.TARGET = 'soft'"),
        ({"MODEL.TEACHER.CONFIG_FILE": ""}, "MODEL.TEACHER.CONFIG_FILE = ''"),
        ({"MODEL.TEACHER.WEIGHTS": ""}, "MODEL.TEACHER.WEIGHTS = ''"),
        ({"MODEL.PERCEP.STRUCTURE": (2, 0)}, "MODEL.PERCEP.STRUCTURE = (2, 0)"),
        ({"MODEL.PERCEP.WIDTHS": (4,)}, "MODEL.PERCEP.WIDTHS = (4,)"),
        ({"MODEL.PERCEP.KERNEL_SIZE": 4}, "MODEL.PERCEP.KERNEL_SIZE = 4"),
        ({"MODEL.PERCEP.INIT": "normal"}, "MODEL.PERCEP.INIT_SCALE = 0.0"),
        ({"MODEL.PERCEP.INIT": "orthogonal"}, "MODEL.PERCEP.INIT = 'orthogonal'"),
        ({"MODEL.PERCEP.LAYER_WEIGHTS": (1.0,)}, "MODEL.PERCEP.LAYER_WEIGHTS = (1.0,)"),
        ({"MODEL.PERCEP.CHUNK_SIZE": -1}, "MODEL.PERCEP.CHUNK_SIZE = -1"),
        ({"MODEL.PERCEP.LOSS_WEIGHT": -0.1}, "MODEL.PERCEP.LOSS_WEIGHT = -0.1"),
        ({"MODEL.PERCEP.PRETRAINED_VGG": "vgg.pth"}, "MODEL.PERCEP.PRETRAINED_VGG = 'vgg.pth'"),
        ({"MODEL.CONDINST.MASK_HEAD.NAME": "DynamicMaskHead"}, "needs 'PercepMaskHead'"),
        ({"MODEL.PERCEP.ENABLED": False}, "MODEL.PERCEP.ENABLED = False"),
        (
            {"MODEL.PERCEP.TARGET": "gt"},
            "MODEL.TEACHER.CONFIG_FILE = 't.yaml': would be ignored",
        ),
    ],
)
def test_config_refusals_name_key_and_value(changes, message):
    cfg = tiny_cfg()
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "PercepMaskHead"
    cfg.MODEL.PERCEP.ENABLED = True
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1), (4, 8)
    cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS = "t.yaml", "t.pth"
    validate_cfg(cfg)
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_cfg(cfg)


def test_defaults_are_the_papers_and_leave_condinst_plain():
    cfg = get_cfg()
    p = cfg.MODEL.PERCEP
    assert (p.ENABLED, p.LOSS_WEIGHT, tuple(p.STRUCTURE), p.INIT) == (False, 0.1, (2, 2, 4, 4, 4), "he")
    assert tuple(p.WIDTHS) == (64, 128, 256, 512, 512) and p.KERNEL_SIZE == 3
    assert cfg.MODEL.CONDINST.MASK_HEAD.NAME == "DynamicMaskHead"
    validate_cfg(cfg)


# --------------------------------------------------------------------------- head level
def _naive_head_logits(params, locations, im_inds, levels, mask_feats, stride, soi):
    """Per-instance loop of the default 3-layer, 8-channel dynamic head (169 parameters)."""
    _, _, h, w = mask_feats.shape
    ys, xs = torch.meshgrid(
        torch.arange(h) * stride + stride // 2, torch.arange(w) * stride + stride // 2, indexing="ij"
    )
    out = []
    for k in range(len(params)):
        p = params[k]
        lx, ly = locations[k].tolist()
        s = soi[int(levels[k])]
        x = torch.cat([((lx - xs) / s)[None], ((ly - ys) / s)[None], mask_feats[im_inds[k]]], 0)
        x = x.reshape(10, -1).to(p.dtype)
        x = torch.relu(p[0:80].reshape(8, 10) @ x + p[152:160, None])
        x = torch.relu(p[80:144].reshape(8, 8) @ x + p[160:168, None])
        x = p[144:152].reshape(1, 8) @ x + p[168:169, None]
        out.append(x.reshape(1, h, w))
    return aligned_bilinear(torch.stack(out), stride // 4)


def _head_inputs(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask_feats = torch.randn(2, 8, 6, 7, generator=gen, requires_grad=True)
    params = (torch.randn(n, 169, generator=gen) * 0.5).requires_grad_(True)
    inst = Instances(
        (0, 0),
        locations=torch.tensor([[12.0, 20.0], [40.0, 8.0], [36.0, 28.0], [4.0, 44.0]])[:n],
        im_inds=torch.tensor([0, 1, 1, 0])[:n],
        fpn_levels=torch.tensor([0, 2, 1, 0])[:n],
        gt_inds=torch.tensor([2, 0, 0, 2])[:n],
        mask_head_params=params,
    )
    bitmasks = torch.zeros(3, 12, 14)
    bitmasks[0, 2:9, 3:10] = 1
    bitmasks[1, 5:12, 0:4] = 1
    bitmasks[2, 0:6, 6:14] = 1
    gts = [Instances((0, 0), gt_bitmasks=bitmasks[:2]), Instances((0, 0), gt_bitmasks=bitmasks[2:])]
    return mask_feats, params, inst, gts, bitmasks


def _gt_head(loss_weight=0.1):
    net = RandomPerceptualNet(1, structure=(1, 2), widths=(4, 8), seed=3)
    return PercepMaskHead(percep_loss=PerceptualLoss(net, loss_weight=loss_weight), target="gt")


def test_gt_loss_equals_per_instance_reference_and_scales_with_loss_weight():
    mask_feats, params, inst, gts, bitmasks = _head_inputs(4)
    head = _gt_head().train()
    losses = head(mask_feats, 8, inst, gts)
    assert set(losses) == {"loss_mask", "loss_percep"} and losses["loss_percep"].dtype == torch.float32

    logits = _naive_head_logits(params, inst.locations, inst.im_inds, inst.fpn_levels, mask_feats, 8,
                                [64, 128, 256, 512, 1024])
    net = head.percep_loss.net
    terms = []
    for k in range(4):
        pred = net(logits[k : k + 1].sigmoid())[-1]
        target = net(bitmasks[inst.gt_inds[k]][None, None])[-1]
        terms.append(((pred - target) ** 2).mean())
    torch.testing.assert_close(losses["loss_percep"], 0.1 * torch.stack(terms).mean())

    tripled = _gt_head(loss_weight=0.3).train()(mask_feats, 8, inst, gts)
    torch.testing.assert_close(tripled["loss_percep"], 3 * losses["loss_percep"])
    torch.testing.assert_close(tripled["loss_mask"], losses["loss_mask"])


def test_no_instances_gives_a_connected_zero_and_inference_is_the_parents():
    mask_feats, params, inst, gts, _ = _head_inputs(0)
    head = _gt_head().train()
    losses = head(mask_feats, 8, inst, gts)
    assert float(losses["loss_percep"].detach()) == 0.0
    losses["loss_percep"].backward()
    assert mask_feats.grad is not None and params.grad is not None

    mask_feats, params, inst, gts, _ = _head_inputs(3)
    plain = DynamicMaskHead().eval()(mask_feats, 8, inst[:])
    ours = head.eval()(mask_feats, 8, inst[:])
    assert torch.equal(ours.pred_global_masks, plain.pred_global_masks)


def test_loss_network_is_neither_state_nor_parameter_but_follows_to():
    head = _gt_head()
    assert head.state_dict().keys() == DynamicMaskHead().state_dict().keys()
    assert list(head.parameters()) == [] and len(list(head.buffers())) == 2
    head.to(torch.float64)
    assert head.percep_loss.net.dtype == torch.float64


# -------------------------------------------------------------------------- model level
@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


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
        expected = _naive_head_logits(params, instances.locations, instances.im_inds,
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
    plain_cfg = tiny_cfg()
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


def test_pretrained_vgg_variant_is_built_from_a_torchvision_file(tmp_path):
    """The paper's "T" variant: torchvision VGG11 features behind a 1×1 projection."""
    gen = torch.Generator().manual_seed(0)
    state, index, c_in = {}, 0, 3
    for num_convs, width in zip((1, 1, 2, 2, 2), (64, 128, 256, 512, 512)):
        for _ in range(num_convs):
            state[f"features.{index}.weight"] = torch.randn(width, c_in, 3, 3, generator=gen) * 0.01
            state[f"features.{index}.bias"] = torch.zeros(width)
            index, c_in = index + 2, width
        index += 1
    path = tmp_path / "vgg11.pth"
    torch.save(state, path)
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 2, 2, 2), (64, 128, 256, 512, 512)
    cfg.MODEL.PERCEP.PRETRAINED_VGG = str(path)
    net = PercepMaskHead(**PercepMaskHead.from_config(cfg)).percep_loss.net
    assert net.init == "torchvision:vgg11" and net.in_channels == 1
    assert torch.equal(net.blocks[4][1].weight, state["features.18.weight"])


# ------------------------------------------------------------------------ speed options
def _crop_case(concentrated: bool):
    """Logits (3, 1, 32, 32) over a 128-px canvas (mask stride 4), their instances and GTs.

    Each instance's predicted box (input pixels) is given; reg_pred is derived from it at the
    instance's location. With ``concentrated`` the logits are -30 outside the union of the GT
    and predicted boxes (so the prediction mass reaches into the predicted box beyond the GT).
    """
    gt_boxes = torch.tensor([[16.0, 16.0, 64.0, 56.0], [70.0, 8.0, 120.0, 40.0], [8.0, 60.0, 48.0, 120.0]])
    bitmasks = torch.zeros(3, 32, 32)
    for g, (x0, y0, x1, y1) in enumerate(gt_boxes.tolist()):
        bitmasks[g, int(y0) // 4 : int(y1) // 4, int(x0) // 4 : int(x1) // 4] = 1
    gts = [
        Instances((128, 128), gt_boxes=gt_boxes[:2], gt_bitmasks=bitmasks[:2]),
        Instances((128, 128), gt_boxes=gt_boxes[2:], gt_bitmasks=bitmasks[2:]),
    ]
    pred_boxes = torch.tensor([[24.0, 20.0, 80.0, 60.0], [72.0, 4.0, 112.0, 44.0], [4.0, 64.0, 40.0, 104.0]])
    locations = torch.tensor([[40.0, 36.0], [92.0, 20.0], [20.0, 84.0]])
    fpn_levels = torch.tensor([0, 1, 0])
    strides = torch.tensor([8.0, 16.0, 32.0, 64.0, 128.0])[fpn_levels][:, None]
    reg_pred = torch.cat([locations - pred_boxes[:, :2], pred_boxes[:, 2:] - locations], 1) / strides
    inst = Instances(
        (0, 0), gt_inds=torch.tensor([0, 1, 2]), locations=locations, fpn_levels=fpn_levels,
        reg_pred=reg_pred, im_inds=torch.tensor([0, 0, 1]),
    )
    logits = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2
    if concentrated:
        union = torch.cat([torch.minimum(gt_boxes[:, :2], pred_boxes[:, :2]),
                           torch.maximum(gt_boxes[:, 2:], pred_boxes[:, 2:])], 1)
        centres = torch.arange(32) * 4 + 2.0  # input pixel sampled by each mask pixel
        for k, (x0, y0, x1, y1) in enumerate(union.tolist()):
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            logits[k, 0][~(rows[:, None] & cols[None, :])] = -30.0
    return logits.requires_grad_(True), inst, gts


def _percep_head(**keys):
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 1), (4, 8, 8)
    for key, value in keys.items():
        cfg.MODEL.PERCEP[key] = value
    return PercepMaskHead(**PercepMaskHead.from_config(cfg)).train()


def test_cropped_loss_equals_uncropped_when_predictions_stay_in_their_boxes():
    full = _percep_head()
    radius = full.percep_loss.net.support_radius(2)
    cropped = _percep_head(CROP_MARGIN=radius)
    assert cropped.percep_loss.crop_margin == radius and full.percep_loss.crop_margin is None
    for concentrated in (True, False):
        logits, inst, gts = _crop_case(concentrated)
        ref = full.perceptual_loss(logits, inst, gts)
        (ref_grad,) = torch.autograd.grad(ref, logits)
        value = cropped.perceptual_loss(logits, inst, gts)
        (grad,) = torch.autograd.grad(value, logits)
        rel = abs(value.item() - ref.item()) / ref.item()
        if concentrated:
            assert rel < 1e-3
            torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-3 * ref_grad.abs().max())
        else:  # mass outside the boxes is dropped: the crop is then an approximation
            assert rel > 1e-3


def test_speed_keys_load_from_yaml_and_bad_values_name_key_and_value(tmp_path):
    radius = _percep_head().percep_loss.net.support_radius(2)
    path = tmp_path / "speed.yaml"
    path.write_text(
        f"MODEL:\n  PERCEP:\n    CROP_MARGIN: {radius - 1}\n    CROP_APPROXIMATE: True\n"
        '    AUTOCAST: "bfloat16"\n    CHANNELS_LAST: True\n'
    )
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 1), (4, 8, 8)
    cfg.merge_from_file(str(path))
    loss = PercepMaskHead(**PercepMaskHead.from_config(cfg)).percep_loss
    assert (loss.crop_margin, loss.crop_approximate) == (radius - 1, True)
    assert (loss.autocast_dtype, loss.channels_last) == (torch.bfloat16, True)

    with pytest.raises(ValueError, match=r"MODEL.PERCEP: crop_margin=.* below the support radius"):
        _percep_head(CROP_MARGIN=radius - 1)
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.CROP_MARGIN must be int, got 2.5"):
        _percep_head(CROP_MARGIN=2.5)
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.CHANNELS_LAST must be bool, got 'yes'"):
        _percep_head(CHANNELS_LAST="yes")
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.AUTOCAST must be one of .* got 'half'"):
        _percep_head(AUTOCAST="half")
