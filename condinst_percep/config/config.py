"""``CfgNode`` with key checking that names the file and the closest valid keys."""
from __future__ import annotations

import difflib
import os
from typing import Any

import yaml
from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from iopath.common.file_io import g_pathmgr


class ConfigKeyError(KeyError):
    """A config file or an override names a key that does not exist."""

    def __init__(self, key: str, source: str, suggestions: list[str]):
        self.key, self.source, self.suggestions = key, source, suggestions
        hint = (
            "; closest valid keys: " + ", ".join(suggestions)
            if suggestions
            else "; no similar key exists"
        )
        super().__init__(f"unknown config key '{key}' in {source}{hint}")

    def __str__(self) -> str:
        return self.args[0]


class ConfigFileError(ValueError):
    """A config file cannot be read, is not a YAML mapping, or holds a value of the wrong type."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"A.B.C": value}`` for every leaf of a nested mapping (a ``CfgNode`` or parsed YAML)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        full = prefix + str(k)
        if isinstance(v, dict):
            out.update(flatten(v, full + "."))
        else:
            out[full] = v
    return out


def lookup(cfg: dict, key: str) -> Any:
    """The value of the dotted ``key`` ("MODEL.FCOS.NORM") in ``cfg``."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


class CfgNode(_FvcoreCfgNode):
    """fvcore's ``CfgNode`` (``_BASE_`` inheritance, yacs type checks) with clear errors.

    An unknown key in a YAML file or in ``merge_from_list`` overrides raises
    :class:`ConfigKeyError` naming the key, the file (or "command-line overrides") and the closest
    valid keys, instead of yacs' bare ``KeyError``/``AssertionError``.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        if not g_pathmgr.exists(filename):
            raise ConfigFileError(f"config file '{filename}' does not exist")
        with g_pathmgr.open(filename, "r") as f:
            try:
                raw = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigFileError(f"config file '{filename}' is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigFileError(
                f"config file '{filename}' must hold a YAML mapping of keys, "
                f"got {type(raw).__name__}"
            )
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        valid = flatten(self)
        for key in flatten(loaded):
            if key not in valid and not self._is_prefix_of_valid_key(key, valid):
                source = "config file " + " <- ".join(
                    f"'{f}'" for f in _files_defining(key, cfg_filename)
                )
                raise ConfigKeyError(key, source, _closest(key, valid))
        try:
            self.merge_from_other_cfg(type(self)(loaded))
        except ValueError as e:
            raise ConfigFileError(f"in config file '{cfg_filename}': {e}") from e

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2:
            raise ConfigFileError(
                f"config overrides must be KEY VALUE pairs, got an odd number of items: {cfg_list}"
            )
        valid = flatten(self)
        for key in cfg_list[0::2]:
            if key not in valid:
                raise ConfigKeyError(key, "command-line overrides", _closest(key, valid))
        try:
            super().merge_from_list(cfg_list)
        except ValueError as e:
            raise ConfigFileError(f"in command-line overrides: {e}") from e

    @staticmethod
    def _is_prefix_of_valid_key(key: str, valid: dict[str, Any]) -> bool:
        # An empty mapping in YAML (e.g. "FCOS: {}") flattens to no leaf; a leaf that replaces
        # a whole subtree is caught by yacs' type check instead.
        return any(v.startswith(key + ".") for v in valid)


def _closest(key: str, valid: dict[str, Any], n: int = 3) -> list[str]:
    """Valid keys most similar to ``key``: by the full dotted name, then by the last component."""
    leaf = key.rsplit(".", 1)[-1]
    by_full = difflib.get_close_matches(key, list(valid), n=n, cutoff=0.6)
    leaf_ratio = {
        k: difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() for k in valid
    }
    by_leaf = sorted((k for k, r in leaf_ratio.items() if r >= 0.75), key=lambda k: -leaf_ratio[k])
    return list(dict.fromkeys(by_full + by_leaf))[:n]


def _files_defining(key: str, filename: str) -> list[str]:
    """The chain of files, from ``filename`` down its ``_BASE_`` tree, that sets ``key``."""
    with g_pathmgr.open(filename, "r") as f:
        raw = yaml.safe_load(f) or {}
    if key in flatten({k: v for k, v in raw.items() if k != BASE_KEY}):
        return [filename]
    bases = raw.get(BASE_KEY, [])
    for base in [bases] if isinstance(bases, str) else bases:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(filename), base)
        chain = _files_defining(key, base)
        if chain:
            return [filename] + chain
    return []
