"""Bad input at the detectron2 boundary: detectron2 missing, a detectron2 config without our
keys, registering under a taken name, masks of an unknown type."""

import os
import subprocess
import sys

import pytest
import torch

from .d2_helpers import SKIP_REASON

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_without_detectron2_names_what_to_install():
    """Runs everywhere: where detectron2 is importable, a subprocess hides it."""
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "try:\n    import condinst_percep.d2\nexcept ImportError as e:\n    print(e)\n"
        "else:\n    print('imported')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    message = out.stdout
    assert "condinst_percep.d2 needs detectron2" in message
    assert "docs/detectron2.md" in message and "git+https://github.com/facebookresearch/detectron2" in message
    # The core needs no detectron2.
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['detectron2'] = None\n"
         "import condinst_percep.modeling, condinst_percep.engine; print('core ok')"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.stdout.strip() == "core ok", out.stderr


def test_adelaidet_layer_without_adelaidet_names_it():
    pytest.importorskip("detectron2", reason=SKIP_REASON)
    code = (
        "import sys; sys.modules['adet'] = None\n"
        "try:\n    import condinst_percep.d2.adelaidet\nexcept ImportError as e:\n    print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "needs AdelaiDet" in out.stdout and "CondInstPercep" in out.stdout, out.stderr


@pytest.fixture
def d2():
    pytest.importorskip("detectron2", reason=SKIP_REASON)
    import condinst_percep.d2

    return condinst_percep.d2


def test_detectron2_config_without_our_keys_names_add_condinst_percep_config(d2):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "CondInstPercep"
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(KeyError, match=r"add_condinst_percep_config\(cfg\)") as info:
        build_model(cfg)
    # (Importing AdelaiDet adds its keys, MODEL.FCOS.* ..., to detectron2's defaults in place.)
    assert "MODEL.PERCEP.*, MODEL.TEACHER.*" in str(info.value)


def test_add_condinst_percep_config_keeps_existing_keys_and_adds_ours(d2):
    from detectron2.config import CfgNode, get_cfg

    from condinst_percep.config import get_cfg as our_get_cfg
    from condinst_percep.config.config import flatten as _flatten

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    before = cfg.clone()
    d2.add_condinst_percep_config(cfg)
    assert type(cfg.MODEL.PERCEP) is CfgNode  # detectron2's node type, so its YAML dump works
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"  # detectron2's value kept
    assert cfg.MODEL.ROI_HEADS.NAME  # detectron2's own subtrees stay
    ours = our_get_cfg()
    assert cfg.MODEL.PERCEP.LOSS_WEIGHT == ours.MODEL.PERCEP.LOSS_WEIGHT
    assert cfg.MODEL.FCOS.NUM_CLASSES == ours.MODEL.FCOS.NUM_CLASSES
    # Every key detectron2 had is unchanged; a second call changes nothing.
    flat_before = _flatten(before)
    assert all(_flatten(cfg)[k] == v for k, v in flat_before.items())
    after = cfg.dump()
    d2.add_condinst_percep_config(cfg)
    assert cfg.dump() == after
    assert set(flat_before) < set(_flatten(cfg))
    # And the converted config is ours, with detectron2's values where both have the key.
    converted = d2.condinst_cfg(cfg)
    assert converted.MODEL.RESNETS.DEPTH == 101 and converted.MODEL.META_ARCHITECTURE == "CondInst"
    cfg.freeze()
    with pytest.raises(ValueError, match="frozen"):
        d2.add_condinst_percep_config(cfg)


def test_models_registered_together_without_clash_or_override(d2):
    pytest.importorskip("adet", reason="AdelaiDet is not importable")
    import adet.modeling.condinst as adet_condinst
    from detectron2.modeling import META_ARCH_REGISTRY

    from condinst_percep.d2.adelaidet import CondInstPercepAdelaiDet

    assert META_ARCH_REGISTRY.get("CondInst") is adet_condinst.CondInst
    assert META_ARCH_REGISTRY.get("CondInstPercep") is d2.CondInstPercep
    assert META_ARCH_REGISTRY.get("CondInstPercepAdelaiDet") is CondInstPercepAdelaiDet
    # Registering the same class again is a no-op; a taken name is refused, naming both.
    d2.register_meta_arch("CondInstPercep", d2.CondInstPercep)
    with pytest.raises(KeyError, match=r"already holds 'CondInst' \(adet\.modeling\.condinst"):
        d2.register_meta_arch("CondInst", d2.CondInstPercep)
    assert META_ARCH_REGISTRY.get("CondInst") is adet_condinst.CondInst

    class CondInstPercep(torch.nn.Module):  # another package's model of the same name
        pass

    with pytest.raises(KeyError, match="will not override"):
        d2.register_meta_arch("CondInstPercep", CondInstPercep)
    assert META_ARCH_REGISTRY.get("CondInstPercep") is d2.CondInstPercep


def test_unknown_mask_type_is_named(d2):
    from detectron2.structures import Boxes, Instances

    inst = Instances((8, 8), gt_boxes=Boxes(torch.tensor([[0.0, 0, 4, 4]])),
                     gt_classes=torch.tensor([0]), gt_masks=[[0, 0, 4, 0, 4, 4]])
    batch = [{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "instances": inst}]
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['instances'\]\.gt_masks is a list"):
        d2.from_d2_inputs(batch)
    with pytest.raises(ValueError, match="must be a detectron2 Instances, got dict"):
        d2.from_d2_inputs([{"image": batch[0]["image"], "instances": {"gt_boxes": None}}])


def test_percep_adelaidet_refuses_disabled_loss_and_boxinst(d2):
    pytest.importorskip("adet", reason="AdelaiDet is not importable")
    import condinst_percep.d2.adelaidet  # noqa: F401
    from adet.config import get_cfg
    from detectron2.modeling import build_model

    from condinst_percep.config import UnsupportedConfigError

    cfg = get_cfg()
    d2.add_condinst_percep_config(cfg)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "CondInstPercepAdelaiDet", "MODEL.DEVICE", "cpu",
                         "MODEL.BACKBONE.NAME", "build_fcos_resnet_fpn_backbone",
                         "MODEL.PROPOSAL_GENERATOR.NAME", "FCOS", "MODEL.RESNETS.DEPTH", 18,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"],
                         "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"]])
    with pytest.raises(ValueError, match="MODEL.PERCEP.ENABLED is False"):
        build_model(cfg)
    cfg.MODEL.PERCEP.ENABLED = True
    cfg.MODEL.PERCEP.LOSS_WEIGHT = -1.0
    cfg.MODEL.PERCEP.TARGET = "gt"
    cfg.MODEL.TEACHER.WEIGHTS = "teacher.pth"
    with pytest.raises(UnsupportedConfigError) as info:  # our head's checks, every problem
        build_model(cfg)
    assert "MODEL.PERCEP.LOSS_WEIGHT = -1.0" in str(info.value)
    assert "MODEL.TEACHER.WEIGHTS = 'teacher.pth': would be ignored" in str(info.value)
    cfg.MODEL.BOXINST.ENABLED = True
    with pytest.raises(ValueError, match="MODEL.BOXINST.ENABLED"):
        build_model(cfg)
