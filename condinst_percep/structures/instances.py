"""``Instances``: a bag of per-instance fields of equal length (detectron2 semantics)."""

from __future__ import annotations

import itertools
from typing import Any

import torch


class Instances:
    """Per-instance fields of one image, or of a batch of images, all of the same length.

    Fields are read and written as attributes (``inst.scores = t``); every field must have the
    same ``len``. Box fields are plain float tensors ``(N, 4)`` in XYXY pixels (not a ``Boxes``
    class). Indexing with an int, a slice, a bool mask or a long index tensor indexes every
    field. ``image_size`` is ``(height, width)``.
    """

    def __init__(self, image_size: tuple[int, int], **fields: Any):
        self._image_size = tuple(image_size)
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        if self._fields and len(value) != len(self):
            raise ValueError(
                f"Instances field '{name}' has length {len(value)}, but the other fields "
                f"({', '.join(self._fields)}) have length {len(self)}"
            )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        """A copy with every field that has ``.to`` (tensors) moved/cast by ``.to(*args)``."""
        ret = Instances(self._image_size)
        for name, value in self._fields.items():
            ret.set(name, value.to(*args, **kwargs) if hasattr(value, "to") else value)
        return ret

    def __getitem__(self, item: int | slice | torch.Tensor) -> Instances:
        if type(item) is int:
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            item = slice(item, None, len(self))
        ret = Instances(self._image_size)
        for name, value in self._fields.items():
            ret.set(name, value[item])
        return ret

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        raise NotImplementedError("Empty Instances does not support __len__!")

    def __iter__(self):
        raise NotImplementedError("`Instances` object is not iterable!")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenates Instances of the same image size field by field (tensors along dim 0)."""
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        for other in instance_lists[1:]:
            if other.image_size != image_size:
                raise ValueError(
                    f"Instances.cat: image sizes differ ({image_size} vs {other.image_size})"
                )
        ret = Instances(image_size)
        for name in instance_lists[0]._fields:
            values = [i.get(name) for i in instance_lists]
            first = values[0]
            if isinstance(first, torch.Tensor):
                ret.set(name, torch.cat(values, dim=0))
            elif isinstance(first, list):
                ret.set(name, list(itertools.chain(*values)))
            elif hasattr(type(first), "cat"):
                ret.set(name, type(first).cat(values))
            else:
                raise ValueError(f"Instances.cat: unsupported type {type(first)} of field '{name}'")
        return ret

    def __str__(self) -> str:
        fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        return (
            f"Instances(num_instances={len(self) if self._fields else 0}, "
            f"image_height={self._image_size[0]}, image_width={self._image_size[1]}, "
            f"fields=[{fields}])"
        )

    __repr__ = __str__
