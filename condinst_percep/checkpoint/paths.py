"""Resolving ``MODEL.WEIGHTS``: local paths, http(s) URLs and detectron2's model-zoo prefix."""
from __future__ import annotations

from iopath.common.file_io import HTTPURLHandler, PathHandler, PathManager as _PathManagerBase

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


class Detectron2Handler(PathHandler):
    """``detectron2://X`` → ``https://dl.fbaipublicfiles.com/detectron2/X`` (downloaded once)."""

    def __init__(self, path_manager: _PathManagerBase):
        super().__init__()
        self._path_manager = path_manager

    def _get_supported_prefixes(self) -> list[str]:
        return [DETECTRON2_PREFIX]

    def _get_local_path(self, path: str, **kwargs) -> str:
        return self._path_manager.get_local_path(detectron2_url(path), **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs):
        return self._path_manager.open(detectron2_url(path), mode, **kwargs)


def detectron2_url(path: str) -> str:
    """The https URL a ``detectron2://`` path stands for; other paths are returned unchanged."""
    if path.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_URL + path[len(DETECTRON2_PREFIX) :]
    return path


# Downloads are cached in $FVCORE_CACHE (default ~/.torch/iopath_cache), the same cache
# detectron2 uses, so files a detectron2 user already downloaded are reused.
PathManager = _PathManagerBase()
PathManager.register_handler(HTTPURLHandler())
PathManager.register_handler(Detectron2Handler(PathManager))


def resolve_path(path: str, cache_dir: str | None = None) -> str:
    """A local file for ``path`` (a local path, an http(s) URL or a ``detectron2://`` path).

    URLs are downloaded into ``cache_dir`` (default: iopath's cache, ``$FVCORE_CACHE``) unless
    already there. Raises FileNotFoundError naming ``path`` if the local file does not exist.
    """
    if path.startswith(("http://", "https://", DETECTRON2_PREFIX)):
        local = PathManager.get_local_path(path, cache_dir=cache_dir)
    else:
        local = PathManager.get_local_path(path)
    if not PathManager.isfile(local):
        raise FileNotFoundError(f"checkpoint '{path}' not found (looked for '{local}')")
    return local
