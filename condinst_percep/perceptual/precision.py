"""Precision of a frozen sub-network (the loss network, the teacher) apart from the training's.

Config names: ``""`` (the caller's: whatever autocast is active), ``"float32"`` (float32 even
inside the caller's autocast), ``"bfloat16"``, ``"float16"`` (autocast in that dtype).
"""
import contextlib

import torch

__all__ = ["AUTOCAST_NAMES", "autocast_context", "autocast_dtype"]

AUTOCAST_NAMES = {
    "": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16
}


def autocast_dtype(name: str, key: str) -> torch.dtype | None:
    """The dtype a config value names (None for ``""``); ValueError naming ``key`` otherwise."""
    if name not in AUTOCAST_NAMES:
        raise ValueError(f"{key} must be one of {tuple(AUTOCAST_NAMES)}, got {name!r}")
    return AUTOCAST_NAMES[name]


def autocast_context(dtype: torch.dtype | None, device_type: str):
    """A context running the ops inside it in ``dtype``: None leaves the caller's autocast as
    it is, float32 turns autocast off, bfloat16/float16 autocast to that dtype."""
    if dtype is None:
        return contextlib.nullcontext()
    if dtype == torch.float32:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)
