"""CondInst instance segmentation with the generic perceptual loss (Liu et al., CVPR 2021)."""

__version__ = "0.1.0"

# Loaded on first use, so that ``import condinst_percep`` stays light.
_LAZY = {"Predictor": ".engine.predictor", "ExportedPredictor": ".export.exported_predictor"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
