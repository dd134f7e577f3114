"""The shipped perceptual configs: the paper's pair of runs, its teacher, the quickstarts."""
import os

import pytest

from condinst_percep.config import get_cfg
from condinst_percep.engine import validate_cfg
from condinst_percep.modeling import build_model
from condinst_percep.modeling.condinst.teacher import check_teacher_cfg, load_teacher_cfg
from tests.conftest import REPO



def _load(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", name))
    validate_cfg(cfg)
    return cfg


def _leaves(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
    return out


def test_paper_setting_and_its_baseline_differ_only_in_the_loss():
    ours, gt, base = (_load(f"CondInst-Percep/MS_R_50_1x{s}.yaml") for s in ("", "_gt", "_baseline"))
    s = ours.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, tuple(s.STEPS), s.MAX_ITER) == (8, 0.01, (60000, 80000), 90000)
    assert (s.WEIGHT_DECAY, s.MOMENTUM) == (1e-4, 0.9)
    p = ours.MODEL.PERCEP
    assert (p.ENABLED, p.LOSS_WEIGHT, tuple(p.STRUCTURE), p.TARGET) == (True, 0.1, (2, 2, 4, 4, 4), "teacher")
    assert ours.MODEL.RESNETS.DEPTH == 50
    assert ours.MODEL.TEACHER.WEIGHTS.endswith("CondInst_MS_R_101_3x.pth")
    assert gt.MODEL.PERCEP.TARGET == "gt" and not base.MODEL.PERCEP.ENABLED
    a, b = _leaves(ours), _leaves(base)
    differ = {k for k in a if a[k] != b[k]}
    allowed = ("MODEL.PERCEP.", "MODEL.TEACHER.", "MODEL.CONDINST.MASK_HEAD.NAME", "OUTPUT_DIR")
    assert differ and all(k.startswith(allowed) for k in differ)


def test_paper_teacher_is_compatible_with_the_student(monkeypatch):
    monkeypatch.chdir(REPO)
    student = _load("CondInst-Percep/MS_R_50_1x.yaml")
    teacher = load_teacher_cfg(student.MODEL.TEACHER.CONFIG_FILE)
    assert teacher.MODEL.RESNETS.DEPTH == 101
    check_teacher_cfg(student, teacher, student.MODEL.TEACHER.CONFIG_FILE)


def test_quickstart_teacher_needs_the_plain_quickstart_first(tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))
    monkeypatch.chdir(tmp_path)
    cfg = _load("Quickstart/CondInst-Percep-Teacher_shapes.yaml")
    with pytest.raises(FileNotFoundError, match="configs/Quickstart/CondInst_shapes.yaml' first"):
        build_model(cfg)
    assert _load("Quickstart/CondInst-Percep_shapes.yaml").MODEL.PERCEP.TARGET == "gt"


@pytest.mark.parametrize(
    "target, value, reason",
    [("teacher", "half", "must be one of"), ("gt", "bfloat16", "would be ignored")],
)
def test_teacher_autocast_is_refused_by_key_and_value(target, value, reason):
    from condinst_percep.config import UnsupportedConfigError

    cfg = _load("Quickstart/CondInst-Percep_shapes.yaml")
    cfg.MODEL.PERCEP.TARGET = target
    if target == "teacher":
        cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS = "t.yaml", "t.pth"
    cfg.MODEL.TEACHER.AUTOCAST = value
    with pytest.raises(UnsupportedConfigError) as e:
        validate_cfg(cfg)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(f"MODEL.TEACHER.AUTOCAST = {value!r}")
    assert reason in e.value.problems[0]
