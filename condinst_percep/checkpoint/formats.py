"""Reading checkpoint files and renaming their keys into our (AdelaiDet's) state_dict names.

Supported files:

* ``adelaidet``: a ``.pth`` holding ``{"model": state_dict, ...}`` (detectron2/AdelaiDet/our
  Checkpointer) or a bare state_dict (AdelaiDet model zoo). Names are used as they are.
* ``detectron2``: a ``.pkl`` in detectron2's model-zoo format, ``{"model": {name: ndarray},
  "__author__": ...}``. Backbone-only files (``matching_heuristics``; names ``stem.*``,
  ``res2.*``...) are placed under ``backbone.bottom_up.``.
* ``caffe2``: a ``.pkl`` of Caffe2/Detectron1 blobs (detectron2's MSRA ImageNet R-50/R-101),
  ``{name: ndarray}`` or ``{"blobs": {...}}``, renamed by :func:`caffe2_resnet_name`.
* ``torchvision``: a torchvision ResNet ``.pth`` (``conv1.weight``, ``layer1.0.bn1.weight``...),
  renamed by :func:`torchvision_resnet_name`.
"""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

BOTTOM_UP = "backbone.bottom_up."


class CheckpointFileError(ValueError):
    """A file cannot be read as a checkpoint (missing, truncated, corrupt or of another kind)."""


@dataclass
class RawCheckpoint:
    """A checkpoint file's weights in our names, plus everything else the file held."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    format: str
    # Keys dropped during renaming because they have no counterpart (e.g. the classifier).
    dropped: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


# Caffe2 batch-norm blob suffixes: scale, bias, running mean, running (inverse) variance.
_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_(branch1|branch2[abc])_(w|bn_s|bn_b|bn_rm|bn_riv)$")
_C2_STEM = re.compile(r"^(conv1_w|res_conv1_bn_(s|b|rm|riv))$")
_C2_CLASSIFIER = re.compile(r"^(fc1000|pred)_[wb]$")


def caffe2_resnet_name(name: str) -> str | None:
    """Our name for a Caffe2 ResNet blob, or None for the ImageNet classifier.

    ``conv1_w`` → ``backbone.bottom_up.stem.conv1.weight``; ``res_conv1_bn_s`` → ``...stem.conv1
    .norm.weight``; ``res{S}_{B}_branch2{a,b,c}_w`` → ``...res{S}.{B}.conv{1,2,3}.weight``;
    ``res{S}_{B}_branch1_bn_b`` → ``...res{S}.{B}.shortcut.norm.bias``. Raises KeyError for a
    blob outside this scheme.
    """
    if _C2_CLASSIFIER.match(name):
        return None
    if _C2_STEM.match(name):
        if name == "conv1_w":
            return BOTTOM_UP + "stem.conv1.weight"
        return BOTTOM_UP + "stem.conv1.norm." + _C2_BN[name.rsplit("_", 1)[1]]
    m = _C2_BLOCK.match(name)
    if m is None:
        raise KeyError(name)
    stage, block, branch, kind = m.groups()
    module = f"{BOTTOM_UP}res{stage}.{block}.{_C2_BRANCH[branch]}"
    if kind == "w":
        return module + ".weight"
    return module + ".norm." + _C2_BN[kind[len("bn_") :]]


_TV_STEM = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)$")
_TV_BN_FIELDS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def torchvision_resnet_name(name: str) -> str | None:
    """Our name for a torchvision ResNet key, or None for the classifier ``fc.*``.

    ``conv1``/``bn1`` → ``stem.conv1``/``stem.conv1.norm``; ``layer{L}.{B}.conv{n}`` →
    ``res{L+1}.{B}.conv{n}``; ``bn{n}`` → ``conv{n}.norm``; ``downsample.0``/``.1`` →
    ``shortcut``/``shortcut.norm``; all under ``backbone.bottom_up.``. Raises KeyError otherwise.
    """
    if name.startswith("fc."):
        return None
    head, _, leaf = name.rpartition(".")
    if head in _TV_STEM and (leaf == "weight" or (head == "bn1" and leaf in _TV_BN_FIELDS)):
        return f"{BOTTOM_UP}{_TV_STEM[head]}.{leaf}"
    m = _TV_BLOCK.match(name)
    if m is None:
        raise KeyError(name)
    layer, block, module, leaf = m.groups()
    if module.startswith("conv"):
        ours = module
    elif module.startswith("bn"):
        ours = f"conv{module[2]}.norm"
    else:
        ours = "shortcut" if module.endswith("0") else "shortcut.norm"
    return f"{BOTTOM_UP}res{int(layer) + 1}.{block}.{ours}.{leaf}"


def _rename(
    state_dict: dict[str, Any], rename, fmt: str, path: str
) -> tuple["OrderedDict[str, torch.Tensor]", dict[str, str]]:
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    dropped: dict[str, str] = {}
    unknown = []
    for name, value in state_dict.items():
        try:
            ours = rename(name)
        except KeyError:
            unknown.append(name)
            continue
        if ours is None:
            dropped[name] = "ImageNet classifier, not part of the detector"
        else:
            out[ours] = _as_tensor(value, name, path)
    if unknown:
        raise CheckpointFileError(
            f"'{path}' looks like a {fmt} ResNet checkpoint, but {len(unknown)} of its keys fit no "
            f"ResNet name, e.g. {unknown[:5]}"
        )
    return out, dropped


def _as_tensor(value: Any, name: str, path: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise CheckpointFileError(
        f"'{path}': entry '{name}' is a {type(value).__name__}, not a tensor or array"
    )


def _is_torchvision_resnet(keys) -> bool:
    return "conv1.weight" in keys and "layer1.0.conv1.weight" in keys


def read_checkpoint(path: str) -> RawCheckpoint:
    """Read a local checkpoint file (see module doc) into a :class:`RawCheckpoint`.

    ``.pkl`` files are read with ``pickle`` (detectron2 and Caffe2 files), anything else with
    ``torch.load(weights_only=True)``. Raises :class:`CheckpointFileError` naming the file if it
    is truncated, corrupt, or holds no weights.
    """
    if path.endswith(".pkl"):
        return _read_pickle(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure (KeyError for text, ...) means one thing
        size = os.path.getsize(path)
        raise CheckpointFileError(
            f"'{path}' ({size} bytes) is not a readable torch checkpoint (truncated, corrupt, or "
            f"not written by torch.save with plain tensors/containers): "
            + ("the file is empty" if size == 0 else _first_line(e))
        ) from e
    if not isinstance(data, dict):
        raise CheckpointFileError(f"'{path}' holds a {type(data).__name__}, not a checkpoint dict")
    if "model" in data and isinstance(data["model"], dict):
        state_dict, extras = data["model"], {k: v for k, v in data.items() if k != "model"}
    elif data and all(isinstance(v, torch.Tensor) for v in data.values()):
        state_dict, extras = data, {}
    else:
        raise CheckpointFileError(
            f"'{path}' is neither a state_dict nor a {{'model': state_dict}} checkpoint; "
            f"top-level keys: {sorted(map(str, data))[:10]}"
        )
    if not state_dict:
        raise CheckpointFileError(f"'{path}' holds an empty state_dict")
    state_dict = _strip_prefix(state_dict, "module.")
    if _is_torchvision_resnet(state_dict):
        renamed, dropped = _rename(state_dict, torchvision_resnet_name, "torchvision", path)
        return RawCheckpoint(renamed, "torchvision", dropped, extras)
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFileError(
                f"'{path}': model entry '{name}' is a {type(value).__name__}, not a tensor"
            )
    return RawCheckpoint(state_dict, "adelaidet", {}, extras)


def _first_line(e: Exception, limit: int = 120) -> str:
    """``Type: first sentence of the message``, cut to ``limit`` characters: torch's messages
    go on with advice (e.g. to load with ``weights_only=False``) that does not apply here."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).strip())
    line = (text.splitlines() or [""])[0].split(". ")[0]
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(e).__name__}: {line}"


def _read_pickle(path: str) -> RawCheckpoint:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - as in read_checkpoint
        raise CheckpointFileError(
            f"'{path}' is not a readable pickle checkpoint (truncated or corrupt): {_first_line(e)}"
        ) from e
    if not isinstance(data, dict) or not data:
        raise CheckpointFileError(f"'{path}' holds a {type(data).__name__}, not a dict of weights")
    if "model" in data and "__author__" in data:
        weights = {k: _as_tensor(v, k, path) for k, v in data["model"].items()}
        if data.get("matching_heuristics") and all(
            k.startswith(("stem.", "res")) for k in weights
        ):
            weights = {BOTTOM_UP + k: v for k, v in weights.items()}
        extras = {k: v for k, v in data.items() if k != "model"}
        return RawCheckpoint(OrderedDict(weights), "detectron2", {}, extras)
    blobs = data.get("blobs", data)
    blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    renamed, dropped = _rename(blobs, caffe2_resnet_name, "Caffe2", path)
    return RawCheckpoint(renamed, "caffe2", dropped, {})


def _strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Drop ``prefix`` (DDP's ``module.``) when every key has it, keeping torch's metadata."""
    if not all(k.startswith(prefix) for k in state_dict):
        return state_dict
    out = OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict(
            (k[len(prefix) :] if k.startswith(prefix) else k, v)
            for k, v in metadata.items()
            if k != prefix.rstrip(".")
        )
    return out
