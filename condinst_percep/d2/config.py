"""Our config keys on a detectron2 / AdelaiDet ``CfgNode``, and back to our own config."""

from __future__ import annotations

import copy

from fvcore.common.config import CfgNode as FvcoreCfgNode

from ..config import CfgNode, get_cfg
from ..config.config import flatten as _leaves


class MissingConfigKeysError(KeyError):
    """A detectron2 config lacks the keys condinst-percep reads."""

    def __str__(self) -> str:
        return self.args[0]


def add_condinst_percep_config(cfg: FvcoreCfgNode) -> FvcoreCfgNode:
    """Adds every key condinst-percep reads (``condinst_percep.config.get_cfg()``: AdelaiDet's
    FCOS/CondInst keys, ``MODEL.PERCEP.*``, ``MODEL.TEACHER.*``, ...) that ``cfg`` lacks, with
    our defaults; keys already in ``cfg`` (detectron2's, AdelaiDet's) keep their values.
    Call it before merging a YAML that sets our keys. Returns ``cfg``.
    """
    if cfg.is_frozen():
        raise ValueError("add_condinst_percep_config: the config is frozen; call it before freeze()")
    node_type = type(cfg)
    for key, value in _leaves(get_cfg()).items():
        *parents, leaf = key.split(".")
        node = cfg
        for i, part in enumerate(parents):
            if part not in node:
                node[part] = node_type()
            node = node[part]
            if not isinstance(node, FvcoreCfgNode):
                raise ValueError(
                    f"add_condinst_percep_config: {'.'.join(parents[: i + 1])} is a value in this "
                    f"config, but condinst-percep reads {key} under it"
                )
        if leaf not in node:
            node[leaf] = copy.deepcopy(value)
    return cfg


def condinst_cfg(cfg: FvcoreCfgNode) -> CfgNode:
    """Our config (``condinst_percep.config.get_cfg()``) with every key's value taken from the
    detectron2 config ``cfg``; ``MODEL.META_ARCHITECTURE`` becomes ``"CondInst"``, the model
    our builders describe. Keys of detectron2's other models are not carried over.

    Raises :class:`MissingConfigKeysError` (a KeyError) naming the missing keys and ``add_condinst_percep_config`` when ``cfg`` was
    built without it.
    """
    ours = get_cfg()
    theirs = _leaves(cfg)
    missing = [key for key in _leaves(ours) if key not in theirs]
    if missing:
        raise MissingConfigKeysError(
            f"this detectron2 config lacks condinst-percep's keys ({', '.join(_absent(cfg, missing))}):"
            " call condinst_percep.d2.add_condinst_percep_config(cfg) on it before merging the YAML"
        )
    for key in _leaves(ours):
        *parents, leaf = key.split(".")
        node = ours
        for part in parents:
            node = node[part]
        node[leaf] = copy.deepcopy(theirs[key])
    ours.MODEL.META_ARCHITECTURE = "CondInst"
    return ours


def _absent(cfg: FvcoreCfgNode, keys: list[str]) -> list[str]:
    """``keys`` summarised by their first node absent from ``cfg`` ("MODEL.FCOS.*")."""
    out: dict[str, None] = {}
    for key in keys:
        parts, node = key.split("."), cfg
        for i, part in enumerate(parts):
            if part not in node:
                out[".".join(parts[: i + 1]) + (".*" if i < len(parts) - 1 else "")] = None
                break
            node = node[part]
    return list(out)
