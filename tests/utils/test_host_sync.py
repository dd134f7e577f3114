"""Where the training step makes the host wait for the device: the audit tool itself, then the
exact list of such points in a CondInst training step (plain, perceptual with GT or teacher
targets, TOPK sampling) and in the training loop (one read per iteration)."""
import collections
import os
import re

import pytest
import torch
import torch.nn.functional as F

from condinst_percep.engine.train_loop import SimpleTrainer
from condinst_percep.layers.host_values import segment_ids, values_on
from condinst_percep.modeling import build_model
from condinst_percep.utils.events import EventStorage
from condinst_percep.utils.host_sync import HOST_SIDE_BY_DESIGN, HostSyncAudit
from tests.conftest import ASSETS, REPO, load_tool, tiny_cfg
from tests.percep_helpers import STUDENT, make_batch, tiny_percep_cfg

TESTS = str(REPO / "tests")  # the audited helpers below live under it
_KEY = re.compile(r"^(\S+) at (\S+):\d+ \((\S+)\)$")
FCOS_OUTPUTS = "condinst_percep/modeling/fcos/fcos_outputs.py"
CONDINST = "condinst_percep/modeling/condinst/condinst.py"
TRAIN_LOOP = "condinst_percep/engine/train_loop.py"
INPUTS = "condinst_percep/modeling/condinst/inputs.py"
PERCEP_INPUTS = "condinst_percep/perceptual/inputs.py"
CROP = "condinst_percep/perceptual/crop.py"


def _by_function(points: collections.Counter) -> collections.Counter:
    """{(op, path, function): count}, line numbers dropped (they move with every edit)."""
    out: collections.Counter = collections.Counter()
    for key, n in points.items():
        match = _KEY.match(key)
        assert match, key
        out[match.groups()] += n
    return out


# ------------------------------------------------------------------------------ the audit
def _item(x):
    return x.sum().item()


def _truth(x):
    return bool((x > 2).any())


def _nonzero(x):
    return torch.nonzero(x > 2)


def _bool_index(x):
    return x[x > 2]


def _bool_index_put(x):
    y = x.clone()
    y[y > 2] = 0
    return y


def _tolist(x):
    return x.tolist()


def _to_host(x):
    return x.cpu()


def _unique(x):
    return torch.unique(x)


def _bincount(x):
    return torch.bincount(x.long())


def _repeat_interleave(x):
    return torch.repeat_interleave(x, torch.ones(len(x), dtype=torch.int64))


def _equal(x):
    return torch.equal(x, x)


def _host_data_to_device(x):
    return torch.tensor([1.0, 2.0], device=x.device)


def _host_scalar_to_device(x):
    return x.new_tensor(3.0)


def _device_only(x):
    # Output sizes known on the host: none of these waits for the device.
    idx = torch.tensor([0, 2])
    return (
        x.index_select(0, idx), x[idx], x.topk(2), x.sort(), torch.randperm(len(x)),
        x.masked_fill(x > 2, 0), torch.where(x > 2, x, 0), x.cumsum(0), x.clamp_min(1),
        torch.repeat_interleave(x, torch.ones(len(x), dtype=torch.int64), output_size=len(x)),
        x.to("cpu"), x.max(),
        # Host data left on the host, fill kernels, scalars as kernel arguments, copies of
        # device tensors.
        torch.tensor([1, 2]), torch.full((2,), 3.0, device=x.device), x * 2.0,
        torch.as_tensor(x, device=x.device), values_on([8, 16], x.device), segment_ids([2, 1], x.device),
    )


def test_audit_finds_each_kind_of_host_read_by_function():
    x = torch.arange(6.0)
    funcs = [_item, _truth, _nonzero, _bool_index, _bool_index_put, _tolist, _to_host, _unique,
             _bincount, _repeat_interleave, _equal, _host_data_to_device, _host_scalar_to_device]
    with HostSyncAudit(roots=[TESTS]) as audit:
        for f in funcs:
            f(x)
    found = {(op, func) for op, path, func in _by_function(audit.points)}
    assert all(path == "tests/utils/test_host_sync.py" for _, path, _ in _by_function(audit.points))
    assert {func for _, func in found} == {f.__name__ for f in funcs}
    assert ("_local_scalar_dense", "_item") in found and ("_local_scalar_dense", "_truth") in found
    assert ("nonzero", "_nonzero") in found
    assert ("tolist", "_tolist") in found and ("cpu", "_to_host") in found
    assert ("repeat_interleave", "_repeat_interleave") in found and ("equal", "_equal") in found
    assert ("tensor_from_host", "_host_data_to_device") in found
    assert ("new_tensor_from_host", "_host_scalar_to_device") in found
    assert audit.total == sum(audit.points.values()) >= len(funcs)


def test_audit_ignores_ops_whose_output_size_is_known_on_the_host():
    with HostSyncAudit(roots=[TESTS]) as audit:
        _device_only(torch.arange(6.0))
    assert audit.total == 0, audit.report()
    assert audit.report() == "(none)"


def test_allowed_points_are_reported_apart_with_their_reason():
    x = torch.arange(6.0)
    allow = {"tests/utils/test_host_sync.py:_truth": "host-side on purpose"}
    with HostSyncAudit(roots=[TESTS], allow=allow) as audit:
        _truth(x)
        _item(x)
    assert set(_by_function(audit.points)) == {("_local_scalar_dense", "tests/utils/test_host_sync.py", "_item")}
    assert set(_by_function(audit.allowed)) == {("_local_scalar_dense", "tests/utils/test_host_sync.py", "_truth")}
    assert audit.total == 1
    report = audit.report()
    assert report.index("(_item)") < report.index("allowed") < report.index("(_truth)")
    assert "host-side on purpose" in report


def test_points_outside_the_roots_are_counted_as_outside():
    with HostSyncAudit(roots=[str(ASSETS)]) as audit:
        _item(torch.ones(2))
    assert audit.points == collections.Counter({"_local_scalar_dense at <outside>": 1})


def test_host_values_equal_the_copies_they_replace():
    for values, dtype in [([8, 16, 32], torch.float32), ([-1.0, 1e8], torch.float32),
                          ([3, 0, 5], torch.int64), ([], torch.float32)]:
        got = values_on(values, torch.device("cpu"), dtype)
        assert got.dtype == dtype and torch.equal(got, torch.tensor(values, dtype=dtype))
    for lengths in ([3, 0, 2], [0], [], [1, 1, 1, 4]):
        expected = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.int64))
        assert torch.equal(segment_ids(lengths, torch.device("cpu")), expected)


# -------------------------------------------------------------------- the training step
def _record_mask_head_inputs(model):
    seen = {}

    def hook(module, args, kwargs):
        seen["instances"], seen["images"] = args[2], kwargs.get("images")

    model.mask_head.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _audit_forward_backward(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = _record_mask_head_inputs(model)
    batch = make_batch()
    with HostSyncAudit(allow=HOST_SIDE_BY_DESIGN) as audit:
        losses = model(batch)
        sum(losses.values()).backward()
    return audit, losses, seen, model


ONE_NONZERO = {("nonzero", FCOS_OUTPUTS, "fcos_losses"): 1}


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("plain", ONE_NONZERO),
        ("percep_gt", ONE_NONZERO),
        ("percep_teacher", ONE_NONZERO),
        ("topk", {**ONE_NONZERO, ("index", CONDINST, "_topk_per_gt"): 1}),
        # Crop-to-box: the boxes and the value checks reach the host in one copy.
        ("percep_crop", {**ONE_NONZERO, ("tolist", PERCEP_INPUTS, "check_inputs"): 1}),
    ],
)
def test_training_step_syncs_only_at_the_documented_points(variant, expected, teacher_files):
    cfg = {
        "plain": lambda: tiny_cfg(**STUDENT),
        "percep_gt": lambda: tiny_percep_cfg("gt"),
        "percep_teacher": lambda: tiny_percep_cfg("teacher", *teacher_files),
        "topk": lambda: tiny_cfg(**{**STUDENT, "MODEL.CONDINST.MAX_PROPOSALS": -1,
                                    "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 4}),
        "percep_crop": lambda: tiny_percep_cfg("gt", **{"MODEL.PERCEP.CROP_MARGIN": 2,
                                                        "MODEL.PERCEP.CROP_APPROXIMATE": True}),
    }[variant]()
    teacher_calls = []
    if variant == "percep_teacher":
        from condinst_percep.modeling.condinst import condinst

        original = condinst.CondInst.mask_logits_on

        def counting(self, *args, **kwargs):
            teacher_calls.append(1)
            return original(self, *args, **kwargs)

        condinst.CondInst.mask_logits_on = counting
    try:
        audit, losses, seen, model = _audit_forward_backward(cfg)
    finally:
        if variant == "percep_teacher":
            condinst.CondInst.mask_logits_on = original
    assert dict(_by_function(audit.points)) == expected, audit.report()
    # The input checks read the loader's CPU tensors (three reads per image with objects).
    # The crop planner works on that host copy of the boxes.
    crop_planner = {(CROP, "plan_crops")} if variant == "percep_crop" else set()
    allowed = {(path, function) for _, path, function in _by_function(audit.allowed)}
    assert allowed == {(INPUTS, "check_gt_instances")} | crop_planner
    input_checks = sum(n for point, n in audit.allowed.items() if INPUTS in point)
    assert input_checks == 3 * len(make_batch())
    # The paths meant to be audited did run.
    assert all(torch.isfinite(v) for v in losses.values())
    if variant.startswith("percep"):
        assert losses["loss_percep"] > 0
    if variant == "percep_teacher":
        assert teacher_calls == [1]
    if variant == "topk":
        # 4 per GT (4 GTs with positives), fewer only where a GT has fewer positives
        assert 4 <= len(seen["instances"]) <= 16
    else:
        assert len(seen["instances"]) == cfg.MODEL.CONDINST.MAX_PROPOSALS == 9


def _pad_p6(backbone):
    forward = backbone.forward

    def padded(x):
        features = forward(x)
        features["p6"] = F.pad(features["p6"], (0, 0, 0, 1))
        return features

    backbone.forward = padded


def test_teacher_grid_is_checked_on_the_host_and_a_mismatch_is_refused():
    student = build_model(tiny_cfg(**STUDENT)).train()
    seen = _record_mask_head_inputs(student)
    with torch.no_grad():
        student(make_batch())
    images, instances = seen["images"], seen["instances"]
    assert images.shape[-2:] == (128, 160) and len(instances) == 9
    teacher = build_model(tiny_cfg(**STUDENT)).eval()
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad(), HostSyncAudit() as audit:
        logits = teacher.mask_logits_on(images, instances)
    assert audit.total == 0, audit.report()
    assert logits.shape == (9, 1, 32, 40)

    _pad_p6(teacher.backbone)  # level p6 now has 3 rows instead of ceil(128 / 64) = 2
    with torch.no_grad(), pytest.raises(ValueError, match=r"p6 is \(3, 3\), expected \(2, 3\)"):
        teacher.mask_logits_on(images, instances)
    # The same backbone in a student is refused in its own forward, before any loss.
    _pad_p6(student.backbone)
    with pytest.raises(ValueError, match=r"padded batch \(128, 160\).*p6 is \(3, 3\)"):
        student(make_batch())


# ---------------------------------------------------------------------- the training loop
def test_one_training_iteration_reads_the_host_once_in_the_loop():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**STUDENT))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = SimpleTrainer(model, [make_batch()] * 2, optimizer,
                            grad_clipper=lambda ps: torch.nn.utils.clip_grad_norm_(list(ps), 1.0))
    with EventStorage(0) as storage:
        trainer.run_step()  # the first step creates the momentum buffers
        before = [p.detach().clone() for p in model.parameters()]
        with HostSyncAudit(allow=HOST_SIDE_BY_DESIGN) as audit:
            trainer.run_step()
    loop = {k: n for k, n in _by_function(audit.points).items() if k[1] == TRAIN_LOOP}
    assert loop == {("tolist", TRAIN_LOOP, "_reduce_and_check"): 1}, audit.report()
    assert dict(_by_function(audit.points)) == {**ONE_NONZERO, **loop}, audit.report()
    # the step was taken and the metrics written from that one read
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert set(storage.latest()) >= {"loss_fcos_cls", "loss_mask", "total_loss"}


@pytest.mark.slow
def test_audit_command_runs_the_trainer_on_the_configs_data(tmp_path, capsys):
    from condinst_percep.data import generate_shapes

    main = load_tool("host_sync").main
    json_file = generate_shapes(str(tmp_path), num_images=2, min_size=48, max_size=64, seed=0,
                                max_objects=2)
    dataset = f"coco:{json_file}:{tmp_path / 'images'}"
    main(["--config-file", os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml"),
          "DATASETS.TRAIN", f"('{dataset}',)", "DATALOADER.NUM_WORKERS", "0",
          "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
          "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.CONDINST.MASK_BRANCH.CHANNELS", "16",
          "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
          "MODEL.FCOS.NUM_CLS_CONVS", "1", "MODEL.FCOS.NUM_BOX_CONVS", "1"])
    lines = capsys.readouterr().out.splitlines()
    points = [line.split(None, 1)[1] for line in lines[: lines.index("allowed (host-side by design):")]]
    assert {_KEY.match(p).group(1, 2, 3) for p in points} == {
        ("nonzero", FCOS_OUTPUTS, "fcos_losses"), ("tolist", TRAIN_LOOP, "_reduce_and_check")
    }, lines
    assert any(INPUTS in line for line in lines) and lines[-1].startswith("total 2 (allowed "), lines


def test_cuda_sync_debug_is_refused_with_its_reason_off_cuda(capsys):
    main = load_tool("host_sync").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--cuda-sync-debug", "--config-file",
              os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml"), "MODEL.DEVICE", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "needs MODEL.DEVICE cuda" in error and "MODEL.DEVICE is 'cpu'" in error, error
