"""The machinery of config checks, and the checks of keys that belong to no component.

A component checks its own keys in a ``check_cfg(cfg, bad)`` beside its ``from_config``: for
each problem it calls ``bad(key, reason)``. :func:`collect_problems` runs checks and raises one
:class:`UnsupportedConfigError` listing every problem, each as ``KEY = value: reason``.
``condinst_percep.engine.validate_cfg`` asks every component at the start of a run;
``build_model`` asks the model's (see docs/condinst.md, "Adding a component: where its config
checks go").
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .config import CfgNode, flatten, lookup

# bad(key, reason): how a check reports a problem.
Report = Callable[[str, str], None]
Check = Callable[[CfgNode, Report], None]

# Prefixes of keys kept only so AdelaiDet YAMLs load: nothing reads them, so a non-default value
# asks for a feature that is not implemented. (MODEL.BOXINST.ENABLED has its own reason.)
_COMPAT_ONLY_PREFIXES = ("MODEL.BOXINST.", "MODEL.TOP_MODULE.")


class UnsupportedConfigError(ValueError):
    """A config asks for something not implemented, or holds an invalid value."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "config refused:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def collect_problems(cfg: CfgNode, checks: Iterable[Check]) -> None:
    """Runs every check on ``cfg``; raises :class:`UnsupportedConfigError` listing all the
    problems they report, each as ``KEY = value: reason``."""
    problems: list[str] = []

    def bad(key: str, reason: str) -> None:
        problems.append(f"{key} = {lookup(cfg, key)!r}: {reason}")

    for check in checks:
        check(cfg, bad)
    if problems:
        raise UnsupportedConfigError(problems)


def check_choice(
    cfg: CfgNode, bad: Report, key: str, allowed: Iterable[Any], why: str = "not implemented"
) -> None:
    """Reports ``key`` unless its value is one of ``allowed`` (take them from the table the
    code dispatches on, so the check and the code cannot disagree)."""
    allowed = tuple(allowed)
    if lookup(cfg, key) not in allowed:
        bad(key, f"{why}; supported: {', '.join(repr(a) for a in allowed)}")


def check_cfg(cfg: CfgNode, bad: Report) -> None:
    """Keys of no component: those kept only so AdelaiDet YAMLs load must keep their default."""
    from .defaults import _C

    defaults = flatten(_C)
    for key, value in flatten(cfg).items():
        if key.startswith(_COMPAT_ONLY_PREFIXES) and key != "MODEL.BOXINST.ENABLED":
            if key in defaults and value != defaults[key]:
                bad(key, "kept only so AdelaiDet YAMLs load; the feature is not implemented")
