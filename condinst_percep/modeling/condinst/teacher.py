"""The frozen teacher of the perceptual loss: a CondInst built from its own config and weights.

The teacher runs on the student's padded, normalised batch (not on the raw inputs): its pixel
convention and location grid must therefore be the student's, which :func:`check_teacher_cfg`
enforces by key before anything is built or downloaded.
"""

from __future__ import annotations

import logging
import os

from fvcore.common.config import CfgNode

from torch import nn

from ...checkpoint import CheckpointMismatchError, Checkpointer
from ...config import get_cfg
from ...config.config import lookup
from ...config.validate import check_cfg, collect_problems
from ..backbone import backbone_output_names, neck_key

logger = logging.getLogger(__name__)

# Keys whose values must be equal in the teacher's and the student's config, and why.
_MUST_MATCH = {
    "MODEL.FCOS.IN_FEATURES": "FPN levels: the student's pos_inds index the teacher's locations",
    "MODEL.FCOS.FPN_STRIDES": "FPN strides: the student's pos_inds index the teacher's locations",
    "MODEL.CONDINST.MASK_OUT_STRIDE": "mask stride: both masks must lie on the same canvas",
    "INPUT.FORMAT": "the teacher reads the student's normalised batch",
    "MODEL.PIXEL_MEAN": "the teacher reads the student's normalised batch",
    "MODEL.PIXEL_STD": "the teacher reads the student's normalised batch",
}


def _value(cfg: CfgNode, key: str):
    # Lists and tuples (YAML vs defaults) compare and print alike.
    value = lookup(cfg, key)
    return list(value) if isinstance(value, (list, tuple)) else value


def load_teacher_cfg(config_file: str) -> CfgNode:
    """The teacher's config: defaults, then ``config_file`` (with its ``_BASE_`` chain), with
    the perceptual loss switched off (the teacher only serves mask logits)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"MODEL.TEACHER.CONFIG_FILE = {config_file!r}: no such file (relative paths are "
            f"resolved from the working directory {os.getcwd()!r})"
        )
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.MODEL.PERCEP.ENABLED = False
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "DynamicMaskHead"
    cfg.MODEL.TEACHER.CONFIG_FILE = ""
    cfg.MODEL.TEACHER.WEIGHTS = ""
    return cfg


def check_teacher_cfg(student_cfg: CfgNode, teacher_cfg: CfgNode, config_file: str) -> None:
    """Raise ValueError naming every key in which the teacher cannot serve the student."""
    problems = [
        f"{key}: teacher {_value(teacher_cfg, key)!r} vs student {_value(student_cfg, key)!r} "
        f"({why})"
        for key, why in _MUST_MATCH.items()
        if _value(teacher_cfg, key) != _value(student_cfg, key)
    ]
    # The padding multiple is the stride of the last backbone output (FPN top levels included).
    t_top, s_top = backbone_output_names(teacher_cfg)[-1], backbone_output_names(student_cfg)[-1]
    if t_top != s_top:
        problems.append(
            f"MODEL.FCOS.TOP_LEVELS / {neck_key(teacher_cfg)}.IN_FEATURES: teacher's last level "
            f"{t_top} vs "
            f"student's {s_top} (the batch padding multiple would differ)"
        )
    if problems:
        raise ValueError(
            f"teacher MODEL.TEACHER.CONFIG_FILE = {config_file!r} cannot serve this student:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def wants_teacher(cfg: CfgNode) -> bool:
    """Whether ``cfg`` trains with a teacher's masks as perceptual targets."""
    return cfg.MODEL.PERCEP.ENABLED and cfg.MODEL.PERCEP.TARGET == "teacher"


def build_teacher(student_cfg: CfgNode, model_cls: type[nn.Module]) -> nn.Module:
    """The frozen teacher named by ``student_cfg.MODEL.TEACHER``, a ``model_cls`` (the
    student's meta-architecture, which calls this from its ``from_config``): built on the CPU
    (the student's head moves it along with the student), weights loaded, eval mode, no grad.

    Raises if its config is incompatible (:func:`check_teacher_cfg`), if ``WEIGHTS`` is
    missing, or if any model key the teacher needs is absent from or mis-shaped in the file: a
    partly random teacher would give meaningless targets.
    """
    t = student_cfg.MODEL.TEACHER
    cfg = load_teacher_cfg(t.CONFIG_FILE)
    check_teacher_cfg(student_cfg, cfg, t.CONFIG_FILE)
    collect_problems(cfg, [check_cfg, model_cls.check_cfg])
    cfg.MODEL.DEVICE = "cpu"
    teacher = model_cls(**model_cls.from_config(cfg))
    weights = t.WEIGHTS
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.TEACHER.WEIGHTS = {weights!r}: no such file (working directory "
            f"{os.getcwd()!r}). If the teacher is a model trained with this package, train "
            f"MODEL.TEACHER.CONFIG_FILE = {t.CONFIG_FILE!r} first; its final checkpoint is "
            f"OUTPUT_DIR/model_final.pth"
        )
    checkpointer = Checkpointer(teacher, cfg=cfg, save_to_disk=False)
    checkpointer.load(weights)
    report = checkpointer.last_report
    if report.missing or report.mismatched:
        raise CheckpointMismatchError(
            f"MODEL.TEACHER.WEIGHTS = {weights!r} does not hold the whole teacher "
            f"({t.CONFIG_FILE}): {len(report.missing)} keys missing, {len(report.mismatched)} "
            f"mis-shaped (an ImageNet backbone or another architecture?)\n{report.table()}"
        )
    teacher.eval()
    teacher.requires_grad_(False)
    logger.info("Teacher %s loaded from %s", t.CONFIG_FILE, weights)
    return teacher
