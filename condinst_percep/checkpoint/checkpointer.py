"""fvcore ``Checkpointer`` that saves atomically and loads every supported weight format."""
from __future__ import annotations

import glob
import logging
import os
import tempfile
from typing import Any, Callable

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from fvcore.common.config import CfgNode
from torch import nn

from ..utils import comm
from .formats import read_checkpoint
from .matching import LoadReport, check_format_conventions, load_model_weights
from .paths import resolve_path

logger = logging.getLogger(__name__)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` via a temporary file in the same directory, fsync, then ``os.replace``.

    A crash or an exception at any point leaves the previous content of ``path`` intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # Persist the rename itself.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Checkpointer(_FvcoreCheckpointer):
    """Saves ``{"model", <checkpointables>, **extra}`` atomically; loads any supported format.

    ``load(path)`` accepts a local path, an http(s) URL or a ``detectron2://`` path holding an
    AdelaiDet/our ``.pth``, a detectron2 or Caffe2 ``.pkl`` or a torchvision ResNet ``.pth``
    (see :mod:`condinst_percep.checkpoint.formats`), logs a table of keys not loaded, and raises
    if less than ``min_loaded_fraction`` of the backbone was found. With ``cfg``, pretrained
    backbones are checked against the config's pixel format and stride placement.
    Only the main process writes files unless ``save_to_disk`` says otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        cfg: CfgNode | None = None,
        save_to_disk: bool | None = None,
        min_loaded_fraction: float = 0.5,
        **checkpointables: Any,
    ):
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.cfg = cfg
        self.min_loaded_fraction = min_loaded_fraction
        self.last_report: LoadReport | None = None
        # Names of the checkpointables the last load() restored.
        self.loaded_checkpointables: list[str] = []

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a directory")
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_temp_files()
        save_file = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _remove_stale_temp_files(self) -> None:
        # Left by a process killed inside atomic_write. Only the main process of one run
        # writes to save_dir, and it saves one file at a time, so any temp file found before
        # a save is stale; unremoved, each would hold a whole checkpoint's worth of disk.
        for pattern in (".*.pth.*.tmp", ".last_checkpoint.*.tmp"):
            for stale in glob.glob(os.path.join(glob.escape(self.save_dir), pattern)):
                logger.warning("Removing %s, left by an interrupted checkpoint write", stale)
                os.remove(stale)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), mode="w")

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load weights (and, for our own checkpoints, ``checkpointables``) from ``path``.

        Returns what the file holds besides the model and the loaded checkpointables (e.g.
        ``iteration``). An empty ``path`` loads nothing and returns ``{}``.
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialisation.")
            return {}
        local = resolve_path(path)
        logger.info("Loading checkpoint from %s", path if local == path else f"{path} ({local})")
        raw = read_checkpoint(local)
        if self.cfg is not None:
            check_format_conventions(raw.format, self.cfg, path)
        self.last_report = load_model_weights(
            self.model,
            raw.state_dict,
            source=path,
            dropped=raw.dropped,
            min_loaded_fraction=self.min_loaded_fraction,
        )
        extras = dict(raw.extras)
        self.loaded_checkpointables = []
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in extras:
                logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(extras.pop(key))
                self.loaded_checkpointables.append(key)
        return extras
