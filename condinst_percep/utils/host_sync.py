"""Find the places where code would make the host wait for an accelerator.

On a GPU, reading a device value on the host (``.item()``, ``bool(t)``, ``.tolist()``) or an
op whose output shape depends on device data (``nonzero``, boolean indexing, ``unique``)
blocks Python until every queued kernel has run, so the host stops queueing work ahead of the
GPU. The same code on the CPU has no queue to wait for, so these points cannot be timed here;
they can be *found* here, which is what :class:`HostSyncAudit` does: it runs the code under a
dispatch mode that notes every such op together with the innermost line of the calling
package, so a CPU-only test can pin the list of synchronisation points in a training step.

Tensors built from host data on a device (``torch.tensor(values, device=...)``,
``x.new_tensor(value)``) are counted: on a GPU they copy from pageable memory and wait for the
stream. Moves of existing tensors (``.to("cuda")``) are not: on the CPU every tensor is already
where it goes. Explicit copies to the host (``.cpu()``) are counted; ``.to("cpu")`` is not (on
a CPU run it cannot be told apart from a move to the model's device).

Code that reads tensors which are on the host by design (the data loader's CPU tensors,
checked before they are moved to the device) can be set apart with ``allow``; see
:data:`HOST_SIDE_BY_DESIGN`.

``tools/host_sync.py`` runs it over one training iteration of a config's trainer.
"""
from __future__ import annotations

import collections
import os
import sys
from typing import Iterable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_THIS_FILE = os.path.abspath(__file__)

# Ops whose CUDA kernels copy a device value to the host before returning.
_ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # item(), bool(t), int(t), float(t)
    aten.nonzero.default,
    aten.nonzero.out,
    aten.equal.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
}
# Indexing ops sync when an index is a boolean mask (it is turned into nonzero() first).
_SYNC_WITH_BOOL_INDEX = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
# Tensor methods that read the whole tensor on the host without passing through dispatch.
_HOST_READ_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}
# Tensors built from host data (Python numbers, lists, arrays) on a device: on a GPU a copy from
# pageable host memory, which waits for the stream like a read (``memcpy_and_sync``). Counted
# when the device is given (``device=``) or inherited (``new_tensor``): data meant for the
# model's device. ``torch.full`` and arithmetic with Python scalars need no copy.
_HOST_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}

# Code of this package that reads tensors on the host on purpose, with the reason. Keys are
# "path" or "path:function", paths relative to the package's parent folder.
HOST_SIDE_BY_DESIGN: dict[str, str] = {
    "condinst_percep/modeling/condinst/inputs.py": (
        "checks the data loader's inputs while they are still CPU tensors, before CondInst "
        "moves them to the device"
    ),
    "condinst_percep/perceptual/crop.py:plan_crops": (
        "plans the crop windows on the host copy of the boxes that the loss's input check "
        "made (that copy is the crop path's one synchronisation)"
    ),
}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _repeat_interleave_syncs(func, args, kwargs) -> bool:
    # Without output_size the length of the result is read from the repeats on the device.
    return func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor) and (
        kwargs.get("output_size") is None
    )


class _DispatchRecorder(TorchDispatchMode):
    def __init__(self, audit: "HostSyncAudit"):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func in _ALWAYS_SYNC
            or (func in _SYNC_WITH_BOOL_INDEX and _has_bool_index(args))
            or _repeat_interleave_syncs(func, args, kwargs)
        ):
            self.audit._record(str(func.overloadpacket.__name__))
        return func(*args, **kwargs)


class _MethodRecorder(TorchFunctionMode):
    def __init__(self, audit: "HostSyncAudit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READ_METHODS:
            self.audit._record(func.__name__)
        elif func in _HOST_DATA_FACTORIES and _copies_host_data_to_a_device(func, args, kwargs):
            self.audit._record(f"{func.__name__}_from_host")
        return func(*args, **kwargs)


def _copies_host_data_to_a_device(func, args, kwargs) -> bool:
    if func is torch.Tensor.new_tensor:
        data = args[1] if len(args) > 1 else kwargs.get("data")
        return not isinstance(data, torch.Tensor)
    data = args[0] if args else kwargs.get("data")
    return not isinstance(data, torch.Tensor) and kwargs.get("device") is not None


def innermost_site(frame, roots: Iterable[str]) -> tuple[str, int, str] | None:
    """``(path, line, function)`` of the innermost frame from ``frame`` outwards whose file lies
    under one of ``roots`` (absolute folders) and is not this module; ``path`` relative to that
    root's parent (``condinst_percep/...``). None if no frame does."""
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        root = next((r for r in roots if path.startswith(r + os.sep)), None)
        if root is not None and path != _THIS_FILE:
            where = os.path.relpath(path, os.path.dirname(root))
            return where, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


class HostSyncAudit:
    """Context manager recording every host synchronisation point reached inside it.

    Each point is keyed by ``"<op> at <path>:<line> (<function>)"``, the innermost frame whose
    file lies under one of ``roots`` (default: this package), paths relative to the root's
    parent. Points reached only from outside the roots are keyed ``"<op> at <outside>"``.

    Points whose frame matches a key of ``allow`` (``"path"`` or ``"path:function"``) go to
    ``allowed`` instead of ``points``, with the reason given as the key's value.

    Example::

        with HostSyncAudit(allow=HOST_SIDE_BY_DESIGN) as audit:
            loss = sum(model(batch).values())
            loss.backward()
        print(audit.report())
    """

    def __init__(
        self, roots: Iterable[str] | None = None, allow: Mapping[str, str] | None = None
    ):
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.roots = tuple(os.path.abspath(r) for r in (roots or (package,)))
        self.allow = dict(allow or {})
        self.points: collections.Counter[str] = collections.Counter()
        self.allowed: collections.Counter[str] = collections.Counter()
        self._allow_keys_used: set[str] = set()
        self._modes: list = []

    def _record(self, op: str) -> None:
        site = innermost_site(sys._getframe(2), self.roots)
        if site is None:
            self.points[f"{op} at <outside>"] += 1
            return
        where, line, function = site
        key = f"{op} at {where}:{line} ({function})"
        allow_key = next((k for k in (where, f"{where}:{function}") if k in self.allow), None)
        if allow_key is None:
            self.points[key] += 1
        else:
            self.allowed[key] += 1
            self._allow_keys_used.add(allow_key)

    def __enter__(self) -> "HostSyncAudit":
        self._modes = [_MethodRecorder(self), _DispatchRecorder(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    @property
    def total(self) -> int:
        """Number of synchronisations recorded, the allowed ones not included."""
        return sum(self.points.values())

    def report(self) -> str:
        """One line per synchronisation point, most frequent first; then the allowed ones."""
        lines = [f"{n:5d}  {key}" for key, n in self.points.most_common()] or ["(none)"]
        if self.allowed:
            lines.append("allowed (host-side by design):")
            lines += [f"{n:5d}  {key}" for key, n in self.allowed.most_common()]
            lines += [f"       {k}: {self.allow[k]}" for k in sorted(self._allow_keys_used)]
        return "\n".join(lines)
