"""Models: ``build_model(cfg)`` builds CondInst (backbone, FCOS, controller, mask branch and
dynamic mask head) on ``cfg.MODEL.DEVICE``."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..config import validate
from ..config.validate import Report, check_choice, collect_problems
from .condinst import CondInst

# MODEL.META_ARCHITECTURE -> the model class, built as cls(**cls.from_config(cfg)) and checked
# by cls.check_cfg(cfg, bad).
META_ARCHITECTURES: dict[str, type[nn.Module]] = {"CondInst": CondInst}


def check_model_cfg(cfg, bad: Report) -> None:
    """The checks of every key the model reads: ``MODEL.META_ARCHITECTURE``, ``MODEL.DEVICE``
    and the named meta-architecture's ``check_cfg`` (which asks its parts)."""
    name = cfg.MODEL.META_ARCHITECTURE
    check_choice(cfg, bad, "MODEL.META_ARCHITECTURE", META_ARCHITECTURES)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.MODEL.DEVICE):
        bad("MODEL.DEVICE", "must be 'cpu', 'cuda' or 'cuda:N'")
    if name in META_ARCHITECTURES:
        META_ARCHITECTURES[name].check_cfg(cfg, bad)


def build_model(cfg, *, checked: bool = False) -> nn.Module:
    """The model named by ``MODEL.META_ARCHITECTURE`` on ``MODEL.DEVICE``.

    Its keys are checked first (:func:`check_model_cfg` and the keys of no component), every
    problem reported at once as an ``UnsupportedConfigError``; ``checked=True`` skips that for a
    caller that has run ``condinst_percep.engine.validate_cfg`` on ``cfg`` (the trainer).
    """
    if not checked:
        collect_problems(cfg, [validate.check_cfg, check_model_cfg])
    check_device(cfg.MODEL.DEVICE)
    model_cls = META_ARCHITECTURES[cfg.MODEL.META_ARCHITECTURE]
    model = model_cls(**model_cls.from_config(cfg))
    return model.to(cfg.MODEL.DEVICE)


def check_device(device: str) -> None:
    """Raise, naming ``MODEL.DEVICE``, when this process cannot use ``device`` (detectron2's
    default "cuda" on a machine without CUDA), rather than fail inside ``Module.to`` or fall
    back to the CPU unasked."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(
            f"MODEL.DEVICE = {device!r}, but CUDA cannot be used here ({why}; torch "
            f"{torch.__version__}); add 'MODEL.DEVICE cpu' to train or evaluate on the CPU"
        )
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ValueError(
            f"MODEL.DEVICE = {device!r}, but this process sees {torch.cuda.device_count()} GPU(s)"
        )


__all__ = ["META_ARCHITECTURES", "CondInst", "build_model", "check_device", "check_model_cfg"]
