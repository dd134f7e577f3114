"""Dataset and metadata catalogs with detectron2's semantics.

``DatasetCatalog.register(name, func)`` stores a function returning the dataset as a list of
dicts; ``DatasetCatalog.get(name)`` calls it. ``MetadataCatalog.get(name)`` returns the
:class:`Metadata` of that name (created empty on first use). A reader of a dataset format can
make names with a prefix need no registration (``DatasetCatalog.register_prefix``): such a
name is registered the first time either catalog sees it, so it can be given on the command
line (``coco:JSON_FILE:IMAGE_ROOT``, which ``coco.py`` registers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Metadata:
    """Attributes describing a dataset (``thing_classes``, ``json_file``, ...).

    Setting an attribute to a value different from the one it already holds is an error:
    two sources disagreeing about a dataset's classes would silently corrupt training.
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __getattr__(self, key: str) -> Any:
        # Only called for missing attributes.
        known = sorted(k for k in self.__dict__ if k != "name")
        raise AttributeError(
            f"Metadata of dataset '{self.name}' has no attribute '{key}'. Available: {known}"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != value:
            raise ValueError(
                f"Metadata '{key}' of dataset '{self.name}' is already {self.__dict__[key]!r}; "
                f"refusing to change it to {value!r}"
            )
        object.__setattr__(self, key, value)

    def set(self, **kwargs: Any) -> Metadata:
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "name")
        return f"Metadata(name={self.name!r}, {fields})"


class _DatasetCatalog:
    def __init__(self) -> None:
        self._funcs: dict[str, Callable[[], list[dict]]] = {}
        self._prefixes: dict[str, tuple[Callable[[str], None], str]] = {}

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a callable, got {func!r}")
        if name in self._funcs:
            raise ValueError(f"Dataset '{name}' is already registered")
        self._funcs[name] = func

    def register_prefix(self, prefix: str, register: Callable[[str], None], hint: str) -> None:
        """Names starting with ``prefix`` need no registration: the first time either catalog
        sees one, ``register(name)`` registers it. ``hint`` (how to register a dataset of that
        kind) completes the error for an unknown name."""
        if prefix in self._prefixes:
            raise ValueError(f"Dataset name prefix '{prefix}' is already registered")
        self._prefixes[prefix] = (register, hint)

    def register_by_prefix(self, name: str) -> None:
        """Registers ``name`` through the hook of its prefix, if it has one."""
        for prefix, (register, _) in self._prefixes.items():
            if name.startswith(prefix):
                register(name)
                return

    def get(self, name: str) -> list[dict]:
        """Calls the registered function; raises ``KeyError`` naming the known datasets."""
        if name not in self._funcs:
            self.register_by_prefix(name)
        if name not in self._funcs:
            hints = " or ".join(hint for _, hint in self._prefixes.values())
            raise KeyError(
                f"Dataset '{name}' is not registered. Known datasets: {', '.join(self.list())}. "
                f"Register it with {hints or 'DatasetCatalog.register(name, func)'}."
            )
        try:
            return self._funcs[name]()
        except FileNotFoundError as e:
            if "Known datasets" in str(e):
                raise
            raise FileNotFoundError(f"{e}. Known datasets: {', '.join(self.list())}") from e

    def list(self) -> list[str]:
        return sorted(self._funcs)

    def remove(self, name: str) -> None:
        self._funcs.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._funcs


class _MetadataCatalog:
    def __init__(self) -> None:
        self._metadata: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        """Returns the metadata of ``name``, creating an empty one on first access."""
        if name not in self._metadata and name not in DatasetCatalog:
            DatasetCatalog.register_by_prefix(name)
        if name not in self._metadata:
            self._metadata[name] = Metadata(name)
        return self._metadata[name]

    def list(self) -> list[str]:
        return sorted(self._metadata)

    def remove(self, name: str) -> None:
        self._metadata.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
