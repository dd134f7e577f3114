"""Registering into detectron2's registries without clashing and without overriding."""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY


def register_meta_arch(name: str, obj: type) -> type:
    """Registers ``obj`` in detectron2's ``META_ARCH_REGISTRY`` under ``name``.

    Registering the same object again is a no-op; a name held by anything else (AdelaiDet's
    ``"CondInst"``, another package's model, a reloaded copy of this module) raises
    ``KeyError`` naming both, instead of detectron2's bare assertion or a silent override.
    """
    if name in META_ARCH_REGISTRY:
        existing = META_ARCH_REGISTRY.get(name)
        if existing is obj:
            return obj
        raise KeyError(
            f"detectron2's META_ARCH_REGISTRY already holds {name!r} "
            f"({existing.__module__}.{existing.__qualname__}); condinst_percep will not "
            f"override it with {obj.__module__}.{obj.__qualname__}"
        )
    META_ARCH_REGISTRY._do_register(name, obj)
    return obj
