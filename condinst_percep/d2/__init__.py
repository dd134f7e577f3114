"""The optional detectron2 / AdelaiDet layer: the only part of condinst-percep that imports them.

Importing it registers our CondInst in detectron2's ``META_ARCH_REGISTRY`` as
``"CondInstPercep"`` (AdelaiDet's own ``"CondInst"`` is left alone), so that
``detectron2.modeling.build_model``, ``DefaultTrainer``, ``DefaultPredictor``,
``COCOEvaluator``, ``Visualizer`` and ``DetectionCheckpointer`` use it unchanged::

    from detectron2.config import get_cfg
    from condinst_percep.d2 import add_condinst_percep_config

    cfg = get_cfg()                     # or adet.config.get_cfg()
    add_condinst_percep_config(cfg)     # our keys, keeping the ones already there
    cfg.merge_from_file("configs/CondInst/MS_R_50_1x.yaml")
    cfg.MODEL.META_ARCHITECTURE = "CondInstPercep"

AdelaiDet's CondInst with our perceptual mask head is in :mod:`condinst_percep.d2.adelaidet`
(it needs AdelaiDet). See docs/detectron2.md.
"""

try:
    import detectron2  # noqa: F401
    from detectron2.modeling import META_ARCH_REGISTRY  # noqa: F401
except ImportError as e:
    raise ImportError(
        "condinst_percep.d2 needs detectron2, which is not importable here "
        f"({e}). Install it into this environment first (it has no wheels on PyPI): "
        "pip install 'git+https://github.com/facebookresearch/detectron2.git' with the torch "
        "it was built for, or build it from source; then, for the AdelaiDet layer, AdelaiDet "
        "(https://github.com/aim-uofa/AdelaiDet). See docs/detectron2.md. The rest of "
        "condinst_percep works without either."
    ) from e

from .config import add_condinst_percep_config, condinst_cfg
from .meta_arch import CondInstPercep
from .registry import register_meta_arch
from .structures import from_d2_inputs, to_d2_instances

__all__ = [
    "CondInstPercep",
    "add_condinst_percep_config",
    "condinst_cfg",
    "from_d2_inputs",
    "register_meta_arch",
    "to_d2_instances",
]
