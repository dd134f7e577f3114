"""Refuse configs that ask for a feature this package does not implement, or hold invalid values.

``validate_cfg(cfg)`` collects every problem and raises one :class:`UnsupportedConfigError`
listing them, each as ``KEY = value: reason``. ``build_model`` and the trainer call it, so a
config never silently runs something other than what it says.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

from fvcore.common.config import CfgNode

from ..perceptual.precision import AUTOCAST_NAMES
from ..utils import comm

# Options that switch between implementations: the values this package implements. A value not
# listed is refused. Owners of the modules reading a key extend its row when they add an option.
SUPPORTED_CHOICES: dict[str, tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("CondInst",),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("FCOS",),
    "MODEL.MASK_ON": (True,),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.LOAD_PROPOSALS": (False,),
    "MODEL.RESNETS.DEPTH": (18, 34, 50, 101, 152),
    "MODEL.RESNETS.NORM": ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "GN"),
    "MODEL.RESNETS.RES5_DILATION": (1,),
    "MODEL.FPN.NORM": ("", "FrozenBN", "BN", "SyncBN", "nnSyncBN", "GN"),
    "MODEL.FPN.FUSE_TYPE": ("sum", "avg"),
    "MODEL.FCOS.TOP_LEVELS": (0, 1, 2),
    "MODEL.FCOS.NORM": ("GN", "NaiveGN", "BN", "SyncBN", "none"),
    "MODEL.FCOS.BOX_QUALITY": ("ctrness", "iou"),
    "MODEL.FCOS.LOSS_NORMALIZER_CLS": ("fg", "moving_fg", "all"),
    "MODEL.FCOS.LOC_LOSS_TYPE": ("iou", "linear_iou", "giou"),
    "MODEL.FCOS.USE_RELU": (True,),
    "MODEL.FCOS.YIELD_PROPOSAL": (False,),
    "MODEL.FCOS.YIELD_BOX_FEATURES": (False,),
    "MODEL.CONDINST.BOTTOM_PIXELS_REMOVED": (-1,),
    "MODEL.CONDINST.MASK_HEAD.USE_FP16": (False,),
    "MODEL.CONDINST.MASK_BRANCH.NORM": ("", "BN", "SyncBN", "nnSyncBN", "FrozenBN", "GN"),
    "INPUT.FORMAT": ("BGR", "RGB"),
    "INPUT.MASK_FORMAT": ("polygon", "bitmask"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "INPUT.RANDOM_FLIP": ("horizontal", "none"),
    "INPUT.CROP.ENABLED": (False,),
    "DATALOADER.SAMPLER_TRAIN": ("TrainingSampler", "RepeatFactorTrainingSampler"),
    "SOLVER.LR_SCHEDULER_NAME": ("WarmupMultiStepLR", "WarmupCosineLR"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "norm", "full_model"),
    "SOLVER.AMP.DTYPE": ("float16", "bfloat16"),
    "TEST.AUG.ENABLED": (False,),
    "TEST.PRECISE_BN.ENABLED": (False,),
    "TEST.DETECTIONS_PER_IMAGE": (100,),
}

# AdelaiDet features that are not implemented, with the value that asks for them refused.
_NOT_IMPLEMENTED: dict[str, str] = {
    "MODEL.MOBILENET": "the MobileNetV2 backbone is not implemented",
    "MODEL.BACKBONE.ANTI_ALIAS": "the anti-aliased (blur-pool) ResNet is not implemented",
    "MODEL.FCOS.USE_DEFORMABLE": "deformable convolutions are not implemented",
    "MODEL.RESNETS.DEFORM_MODULATED": "deformable convolutions are not implemented",
    "MODEL.BOXINST.ENABLED": "BoxInst (box-supervised training) is not implemented",
    "INPUT.IS_ROTATE": "rotation augmentation is not implemented",
}

# Keys kept only so AdelaiDet YAMLs load; nothing reads them, so a non-default value is refused.
_NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.BiFPN.NORM",
    "MODEL.CONDINST.MASK_BRANCH.NORM",
)

_COMPAT_ONLY_PREFIXES = ("MODEL.BOXINST.", "MODEL.TOP_MODULE.")

_WHY_CHOICE = {
    "MODEL.MASK_ON": "CondInst always predicts masks",
    "MODEL.RESNETS.RES5_DILATION": "a dilated res5 breaks the FPN strides CondInst relies on",
    "MODEL.FCOS.USE_RELU": "AdelaiDet ignores it and always applies ReLU",
    "MODEL.CONDINST.BOTTOM_PIXELS_REMOVED": "AdelaiDet ignores it (BoxInst only)",
    "MODEL.CONDINST.MASK_HEAD.USE_FP16": "AdelaiDet ignores it; use SOLVER.AMP",
    "TEST.DETECTIONS_PER_IMAGE": "CondInst keeps MODEL.FCOS.POST_NMS_TOPK_TEST detections",
    "TEST.AUG.ENABLED": "test-time augmentation is not implemented",
    "TEST.PRECISE_BN.ENABLED": "precise BN is not implemented",
    "INPUT.CROP.ENABLED": "random crop is not implemented",
}


class UnsupportedConfigError(ValueError):
    """A config asks for something not implemented, or holds an invalid value."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "config refused:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _defaults() -> CfgNode:
    from .defaults import _C

    return _C


def _leaves(node: CfgNode, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, CfgNode):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def validate_cfg(cfg: CfgNode) -> None:
    """Raise :class:`UnsupportedConfigError` listing every unsupported or invalid setting."""
    _collect_problems(
        cfg, _check_choices, _check_not_implemented, _check_backbone, _check_heads, _check_input,
        _check_solver, _check_percep,
    )


def validate_solver(cfg: CfgNode) -> None:
    """:func:`validate_cfg` restricted to ``SOLVER.*``, for the optimizer and schedule builders,
    which also take configs that never went through ``validate_cfg``."""
    _collect_problems(cfg, functools.partial(_check_choices, prefix="SOLVER."), _check_solver)


def _collect_problems(cfg: CfgNode, *checks: Callable[[CfgNode, Callable[[str, str], None]], None]):
    problems: list[str] = []

    def bad(key: str, reason: str) -> None:
        problems.append(f"{key} = {_get(cfg, key)!r}: {reason}")

    for check in checks:
        check(cfg, bad)
    if problems:
        raise UnsupportedConfigError(problems)


def _check_choices(cfg: CfgNode, bad, prefix: str = "") -> None:
    for key, allowed in SUPPORTED_CHOICES.items():
        if key.startswith(prefix) and _get(cfg, key) not in allowed:
            why = _WHY_CHOICE.get(key, "not implemented")
            bad(key, f"{why}; supported: {', '.join(repr(a) for a in allowed)}")


def _check_not_implemented(cfg: CfgNode, bad) -> None:
    for key, why in _NOT_IMPLEMENTED.items():
        if _get(cfg, key):
            bad(key, why)
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        bad("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "deformable convolutions are not implemented")
    if cfg.MODEL.RESNETS.DEFORM_INTERVAL != 1:
        bad("MODEL.RESNETS.DEFORM_INTERVAL", "AdelaiDet's interval ResNet is not implemented")

    defaults = _leaves(_defaults())
    for key, value in _leaves(cfg).items():
        if key.startswith(_COMPAT_ONLY_PREFIXES) and key != "MODEL.BOXINST.ENABLED":
            if key in defaults and value != defaults[key]:
                bad(key, "kept only so AdelaiDet YAMLs load; the feature is not implemented")


# The backbone whose neck is configured by MODEL.BiFPN; every other one reads MODEL.FPN.
_BIFPN_BACKBONE = "build_fcos_resnet_bifpn_backbone"


def neck_key(cfg: CfgNode) -> str:
    """``"MODEL.BiFPN"`` for the BiFPN backbone, else ``"MODEL.FPN"``: the node holding the
    pyramid's ``IN_FEATURES``, ``OUT_CHANNELS`` and ``NORM``."""
    return "MODEL.BiFPN" if cfg.MODEL.BACKBONE.NAME == _BIFPN_BACKBONE else "MODEL.FPN"


def _check_backbone(cfg: CfgNode, bad) -> None:
    r = cfg.MODEL.RESNETS
    if not 0 <= cfg.MODEL.BACKBONE.FREEZE_AT <= 5:
        bad("MODEL.BACKBONE.FREEZE_AT", "must be in 0..5 (0 = train all, 5 = freeze res5 too)")
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "NUM_GROUPS", "WIDTH_PER_GROUP"):
        if r[key] < 1:
            bad(f"MODEL.RESNETS.{key}", "must be a positive integer")
    if r.DEPTH in (18, 34) and (r.NUM_GROUPS != 1 or r.WIDTH_PER_GROUP != 64):
        bad("MODEL.RESNETS.NUM_GROUPS", "ResNet-18/34 have no grouped convs (needs 1 and 64)")
    if r.NORM == "GN" and any(c % 32 for c in _resnet_channels(cfg)):
        bad("MODEL.RESNETS.NORM", "GN uses 32 groups: every ResNet width must divide by 32")
    stages = ["res2", "res3", "res4", "res5"]
    neck = neck_key(cfg)
    fpn_in = list(_get(cfg, f"{neck}.IN_FEATURES"))
    if not fpn_in or any(f not in stages for f in fpn_in):
        bad(f"{neck}.IN_FEATURES", f"must be consecutive entries of {stages}")
    elif fpn_in != stages[stages.index(fpn_in[0]) : stages.index(fpn_in[0]) + len(fpn_in)]:
        bad(f"{neck}.IN_FEATURES", f"must be consecutive entries of {stages}, in order")
    missing = [f for f in fpn_in if f not in r.OUT_FEATURES]
    if missing:
        bad("MODEL.RESNETS.OUT_FEATURES", f"lacks {missing}, which {neck}.IN_FEATURES uses")
    if _get(cfg, f"{neck}.OUT_CHANNELS") < 1:
        bad(f"{neck}.OUT_CHANNELS", "must be a positive integer")
    if cfg.MODEL.FCOS.TOP_LEVELS and fpn_in and fpn_in[-1] != "res5":
        bad(
            "MODEL.FCOS.TOP_LEVELS",
            f"P6/P7 are computed from res5, so {neck}.IN_FEATURES needs it",
        )


def _resnet_channels(cfg: CfgNode) -> list[int]:
    r = cfg.MODEL.RESNETS
    out = [r.STEM_OUT_CHANNELS] + [r.RES2_OUT_CHANNELS * 2**i for i in range(4)]
    if r.DEPTH >= 50:
        out += [r.NUM_GROUPS * r.WIDTH_PER_GROUP * 2**i for i in range(4)]
    return out


def backbone_output_names(cfg: CfgNode) -> list[str]:
    """Names of the backbone's outputs ("p3".."p7" for the defaults) implied by the config."""
    names = [f"p{int(re.sub('res', '', f))}" for f in _get(cfg, f"{neck_key(cfg)}.IN_FEATURES")]
    last = int(names[-1][1:]) if names else 5
    return names + [f"p{last + i + 1}" for i in range(cfg.MODEL.FCOS.TOP_LEVELS)]


_FCOS_TOPK_KEYS = (
    "PRE_NMS_TOPK_TRAIN",
    "PRE_NMS_TOPK_TEST",
    "POST_NMS_TOPK_TRAIN",
    "POST_NMS_TOPK_TEST",
)


def _check_heads(cfg: CfgNode, bad) -> None:
    f, ci = cfg.MODEL.FCOS, cfg.MODEL.CONDINST
    outputs = backbone_output_names(cfg)
    for key, feats in (
        ("MODEL.FCOS.IN_FEATURES", f.IN_FEATURES),
        ("MODEL.CONDINST.MASK_BRANCH.IN_FEATURES", ci.MASK_BRANCH.IN_FEATURES),
    ):
        if not feats or any(x not in outputs for x in feats):
            bad(key, f"must be a non-empty subset of the backbone outputs {outputs}")
    expected_strides = [2 ** int(x[1:]) for x in f.IN_FEATURES if x[1:].isdigit()]
    if list(f.FPN_STRIDES) != expected_strides:
        bad("MODEL.FCOS.FPN_STRIDES", f"must be FCOS.IN_FEATURES' strides {expected_strides}")
    soi = list(f.SIZES_OF_INTEREST)
    if len(soi) != len(f.IN_FEATURES) - 1 or soi != sorted(set(soi)) or (soi and soi[0] <= 0):
        bad(
            "MODEL.FCOS.SIZES_OF_INTEREST",
            "needs len(FCOS.IN_FEATURES) - 1 positive, strictly increasing values",
        )
    if f.NUM_CLASSES < 1:
        bad("MODEL.FCOS.NUM_CLASSES", "must be a positive integer")
    if not 0.0 < f.PRIOR_PROB < 1.0:
        bad("MODEL.FCOS.PRIOR_PROB", "must lie in (0, 1)")
    for key in ("INFERENCE_TH_TRAIN", "INFERENCE_TH_TEST", "NMS_TH", "LOSS_ALPHA"):
        if not 0.0 <= f[key] <= 1.0:
            bad(f"MODEL.FCOS.{key}", "must lie in [0, 1]")
    for key in _FCOS_TOPK_KEYS:
        if f[key] < 1:
            bad(f"MODEL.FCOS.{key}", "must be a positive integer")
    for key in ("NUM_CLS_CONVS", "NUM_BOX_CONVS", "NUM_SHARE_CONVS"):
        if f[key] < 0:
            bad(f"MODEL.FCOS.{key}", "must be >= 0")
    if f.LOSS_GAMMA < 0 or f.LOSS_WEIGHT_CLS < 0 or f.POS_RADIUS <= 0:
        bad("MODEL.FCOS.LOSS_GAMMA", "LOSS_GAMMA, LOSS_WEIGHT_CLS must be >= 0, POS_RADIUS > 0")
    if ci.MAX_PROPOSALS > 0 and ci.TOPK_PROPOSALS_PER_IM > 0:
        bad("MODEL.CONDINST.MAX_PROPOSALS", "and TOPK_PROPOSALS_PER_IM are mutually exclusive")
    for key in ("MAX_PROPOSALS", "TOPK_PROPOSALS_PER_IM"):
        if ci[key] == 0 or ci[key] < -1:
            bad(f"MODEL.CONDINST.{key}", "must be -1 (off) or a positive integer")
    if ci.MASK_HEAD.NUM_LAYERS < 1 or ci.MASK_HEAD.CHANNELS < 1:
        bad("MODEL.CONDINST.MASK_HEAD.NUM_LAYERS", "NUM_LAYERS and CHANNELS must be positive")
    for key in ("OUT_CHANNELS", "CHANNELS"):
        if ci.MASK_BRANCH[key] < 1:
            bad(f"MODEL.CONDINST.MASK_BRANCH.{key}", "must be a positive integer")
    if ci.MASK_BRANCH.NUM_CONVS < 0:
        bad("MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", "must be >= 0")
    mask_in = list(ci.MASK_BRANCH.IN_FEATURES)
    if mask_in and mask_in[0][1:].isdigit():
        mask_stride = 2 ** int(mask_in[0][1:])
        if ci.MASK_OUT_STRIDE < 1 or mask_stride % ci.MASK_OUT_STRIDE:
            bad(
                "MODEL.CONDINST.MASK_OUT_STRIDE",
                f"must divide the mask-branch stride {mask_stride} (of {mask_in[0]})",
            )
    neck = neck_key(cfg)
    neck_channels = _get(cfg, f"{neck}.OUT_CHANNELS")
    if f.NORM in ("GN", "NaiveGN") and neck_channels % 32:
        bad("MODEL.FCOS.NORM", f"GN uses 32 groups: {neck}.OUT_CHANNELS must divide by 32")
    elif f.NORM in ("GN", "NaiveGN") and neck_channels == 32 and expected_strides:
        # One channel per group: on a 1x1 map (an image padded to the top stride) a group holds
        # a single value, which GroupNorm refuses at batch 1 and maps to its bias otherwise.
        top = max(expected_strides)
        smallest = min([*cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST])
        if smallest <= top:
            bad(
                f"{neck}.OUT_CHANNELS",
                f"with MODEL.FCOS.NORM {f.NORM!r} (32 groups) leaves one channel per group, and "
                f"images resized to {smallest} px (INPUT.MIN_SIZE_TRAIN/TEST; 0 = not resized) "
                f"can have a 1x1 map at stride {top}, where each group normalises a single value "
                f"(torch raises at batch 1, the output is only the bias otherwise); use 64+ "
                f"channels or a minimum size above {top}",
            )
    if ci.MASK_BRANCH.NORM == "GN" and ci.MASK_BRANCH.CHANNELS % 32:
        bad(
            "MODEL.CONDINST.MASK_BRANCH.NORM",
            "GN uses 32 groups: MASK_BRANCH.CHANNELS must divide by 32",
        )


def _check_input(cfg: CfgNode, bad) -> None:
    m = cfg.MODEL
    if len(m.PIXEL_MEAN) != 3 or len(m.PIXEL_STD) != 3 or min(m.PIXEL_STD) <= 0:
        bad("MODEL.PIXEL_STD", "PIXEL_MEAN and PIXEL_STD need 3 values, PIXEL_STD positive")
    i = cfg.INPUT
    sizes = list(i.MIN_SIZE_TRAIN)
    if not sizes or min(sizes) <= 0:
        bad("INPUT.MIN_SIZE_TRAIN", "needs at least one positive size")
    if i.MIN_SIZE_TRAIN_SAMPLING == "range" and (len(sizes) != 2 or sizes[0] > sizes[1]):
        bad("INPUT.MIN_SIZE_TRAIN", "sampling 'range' needs exactly (low, high)")
    for key in ("MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        if i[key] <= 0:
            bad(f"INPUT.{key}", "must be positive")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", m.DEVICE):
        bad("MODEL.DEVICE", "must be 'cpu', 'cuda' or 'cuda:N'")
    if m.DEVICE == "cpu" and comm.get_world_size() > 1:
        for key in _NORM_KEYS:
            if _get(cfg, key) == "nnSyncBN":
                bad(key, "torch's SyncBatchNorm needs CUDA across processes; use 'SyncBN'")
    if cfg.DATALOADER.NUM_WORKERS < 0:
        bad("DATALOADER.NUM_WORKERS", "must be >= 0")


def _check_solver(cfg: CfgNode, bad) -> None:
    s = cfg.SOLVER
    if s.BASE_LR <= 0:
        bad("SOLVER.BASE_LR", "must be positive")
    if s.MAX_ITER < 1:
        bad("SOLVER.MAX_ITER", "must be a positive integer")
    steps = list(s.STEPS)
    if steps != sorted(steps) or len(set(steps)) != len(steps) or any(x <= 0 for x in steps):
        bad("SOLVER.STEPS", "must be positive and strictly increasing")
    if not 0.0 <= s.MOMENTUM < 1.0:
        bad("SOLVER.MOMENTUM", "must lie in [0, 1)")
    if not 0.0 <= s.WARMUP_FACTOR <= 1.0:
        bad("SOLVER.WARMUP_FACTOR", "must lie in [0, 1]")
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR" and s.BASE_LR_END > s.BASE_LR:
        bad("SOLVER.BASE_LR_END", f"the cosine schedule ends at most at SOLVER.BASE_LR = {s.BASE_LR}")
    for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "BASE_LR_END", "WARMUP_ITERS",
                "REFERENCE_WORLD_SIZE", "BIAS_LR_FACTOR"):
        if s[key] < 0:
            bad(f"SOLVER.{key}", "must be >= 0")
    if s.WEIGHT_DECAY_BIAS is not None and s.WEIGHT_DECAY_BIAS < 0:
        bad("SOLVER.WEIGHT_DECAY_BIAS", "must be None or >= 0")
    if s.GAMMA <= 0:
        bad("SOLVER.GAMMA", "must be positive")
    if s.IMS_PER_BATCH < 1 or s.CHECKPOINT_PERIOD < 1:
        bad("SOLVER.IMS_PER_BATCH", "IMS_PER_BATCH and CHECKPOINT_PERIOD must be positive")
    if s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_VALUE <= 0:
        bad("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "must be positive")
    if cfg.TEST.EVAL_PERIOD < 0:
        bad("TEST.EVAL_PERIOD", "must be >= 0 (0 disables evaluation during training)")


# --- perceptual CondInst (PERCEPTUAL-HEAD owner, issue 5) ---
PERCEP_TARGETS = ("teacher", "gt")
PERCEP_INITS = ("he", "normal", "uniform", "xavier")
_VGG_STRUCTURES = ((1, 1, 2, 2, 2), (2, 2, 2, 2, 2), (2, 2, 3, 3, 3), (2, 2, 4, 4, 4))


def _positive_ints(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _check_percep(cfg: CfgNode, bad) -> None:
    p, t = cfg.MODEL.PERCEP, cfg.MODEL.TEACHER
    head = cfg.MODEL.CONDINST.MASK_HEAD.NAME
    if p.ENABLED and head != "PercepMaskHead":
        bad("MODEL.CONDINST.MASK_HEAD.NAME", "MODEL.PERCEP.ENABLED needs 'PercepMaskHead'")
    if head == "PercepMaskHead" and not p.ENABLED:
        bad("MODEL.PERCEP.ENABLED", "MASK_HEAD.NAME 'PercepMaskHead' needs it True")
    if p.TARGET not in PERCEP_TARGETS:
        bad("MODEL.PERCEP.TARGET", f"must be one of {PERCEP_TARGETS}")
    structure, widths = tuple(p.STRUCTURE), tuple(p.WIDTHS)
    if not structure or not _positive_ints(structure):
        bad("MODEL.PERCEP.STRUCTURE", "needs at least one block, each a positive int")
    if not _positive_ints(widths) or len(widths) != len(structure):
        bad("MODEL.PERCEP.WIDTHS", f"needs one positive int per block ({len(structure)})")
    k = p.KERNEL_SIZE
    if not _positive_ints([k]) or k % 2 == 0:
        bad("MODEL.PERCEP.KERNEL_SIZE", "must be a positive odd int ('same' padding)")
    if p.INIT not in PERCEP_INITS:
        bad("MODEL.PERCEP.INIT", f"must be one of {PERCEP_INITS}")
    elif p.INIT in ("normal", "uniform") and not p.INIT_SCALE > 0:
        bad("MODEL.PERCEP.INIT_SCALE", f"INIT {p.INIT!r} needs a positive scale")
    elif p.INIT not in ("normal", "uniform") and p.INIT_SCALE != 0:
        bad("MODEL.PERCEP.INIT_SCALE", f"INIT {p.INIT!r} takes no scale (leave it 0.0)")
    lw = tuple(p.LAYER_WEIGHTS)
    if lw and (len(lw) != len(structure) or min(lw) < 0 or max(lw) <= 0):
        bad(
            "MODEL.PERCEP.LAYER_WEIGHTS",
            f"needs one weight >= 0 per block ({len(structure)}), not all 0; () = final block",
        )
    if not p.LOSS_WEIGHT >= 0:
        bad("MODEL.PERCEP.LOSS_WEIGHT", "must be >= 0")
    if not isinstance(p.CHUNK_SIZE, int) or p.CHUNK_SIZE < 0:
        bad("MODEL.PERCEP.CHUNK_SIZE", "must be an int >= 0 (0: all instances at once)")
    if not isinstance(p.SEED, int) or isinstance(p.SEED, bool):
        bad("MODEL.PERCEP.SEED", "must be an int")
    if p.PRETRAINED_VGG and (
        structure not in _VGG_STRUCTURES or widths != (64, 128, 256, 512, 512) or k != 3
    ):
        bad(
            "MODEL.PERCEP.PRETRAINED_VGG",
            "torchvision VGG weights need STRUCTURE of VGG11/13/16/19, the VGG WIDTHS and "
            "KERNEL_SIZE 3",
        )
    if not p.ENABLED:
        return
    if t.AUTOCAST not in AUTOCAST_NAMES:
        bad("MODEL.TEACHER.AUTOCAST", f"must be one of {tuple(AUTOCAST_NAMES)}")
    if p.TARGET == "teacher":
        for key in ("CONFIG_FILE", "WEIGHTS"):
            if not t[key]:
                bad(f"MODEL.TEACHER.{key}", "MODEL.PERCEP.TARGET 'teacher' needs it")
    elif p.TARGET == "gt":
        for key in ("CONFIG_FILE", "WEIGHTS", "AUTOCAST"):
            if t[key]:
                bad(f"MODEL.TEACHER.{key}", "would be ignored: MODEL.PERCEP.TARGET is 'gt'")
