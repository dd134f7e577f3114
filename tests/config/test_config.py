from pathlib import Path

import pytest

from condinst_percep.config import (
    ConfigFileError,
    ConfigKeyError,
    UnsupportedConfigError,
    get_cfg,
)
from condinst_percep.engine import validate_cfg

from tests.conftest import ASSETS, REPO

OURS = REPO / "configs" / "CondInst"
ADELAIDET = ASSETS / "adelaidet_configs"


def load(path: Path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def refused_keys(cfg) -> list[str]:
    with pytest.raises(UnsupportedConfigError) as e:
        validate_cfg(cfg)
    return [p.split(" = ")[0] for p in e.value.problems]


def test_defaults_are_adelaidet_and_valid():
    cfg = get_cfg()
    validate_cfg(cfg)
    assert cfg.MODEL.FCOS.SIZES_OF_INTEREST == [64, 128, 256, 512]
    assert cfg.MODEL.FCOS.NMS_TH == 0.6 and cfg.MODEL.FCOS.TOP_LEVELS == 2
    assert cfg.MODEL.FCOS.THRESH_WITH_CTR is False
    assert cfg.MODEL.CONDINST.MAX_PROPOSALS == -1
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.SOLVER.AMP.DTYPE == "float16"
    assert cfg.VERSION == 2
    # get_cfg returns independent copies.
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    assert get_cfg().MODEL.FCOS.NUM_CLASSES == 80


@pytest.mark.parametrize(
    "name, depth, steps, max_iter",
    [
        ("MS_R_50_1x", 50, (60000, 80000), 90000),
        ("MS_R_50_3x", 50, (210000, 250000), 270000),
        ("MS_R_101_1x", 101, (60000, 80000), 90000),
        ("MS_R_101_3x", 101, (210000, 250000), 270000),
    ],
)
def test_our_condinst_configs_merge_base(name, depth, steps, max_iter):
    cfg = load(OURS / f"{name}.yaml")
    validate_cfg(cfg)
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.SOLVER.STEPS == steps and cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.MODEL.WEIGHTS == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    assert cfg.OUTPUT_DIR == f"output/condinst_{name}"
    # From the base file:
    assert cfg.MODEL.FCOS.THRESH_WITH_CTR is True
    assert cfg.MODEL.CONDINST.MAX_PROPOSALS == 500
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.IMS_PER_BATCH == 16


def test_unknown_key_in_file_names_key_file_and_closest(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  FCOS:\n    NMS_THRESH: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nSOLVER:\n  BASE_LR: 0.02\n')
    with pytest.raises(ConfigKeyError) as e:
        get_cfg().merge_from_file(str(child))
    msg = str(e.value)
    assert "MODEL.FCOS.NMS_THRESH" in msg
    assert str(child) in msg and str(base) in msg
    assert e.value.suggestions[0] == "MODEL.FCOS.NMS_TH"


def test_unknown_key_in_overrides():
    with pytest.raises(ConfigKeyError) as e:
        get_cfg().merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    assert "command-line overrides" in str(e.value)
    assert "SOLVER.BASE_LR" in e.value.suggestions


def test_overrides_and_type_errors(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.STEPS", "(10, 20)", "MODEL.DEVICE", "cpu"])
    assert cfg.SOLVER.STEPS == (10, 20) and cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ConfigFileError, match="SOLVER.MAX_ITER"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "'many'"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  MAX_ITER: lots\n")
    with pytest.raises(ConfigFileError, match="bad.yaml"):
        get_cfg().merge_from_file(str(bad))


@pytest.mark.parametrize("content", ["", "- a\n- b\n", "MODEL: [\n"])
def test_file_that_is_not_a_mapping(tmp_path, content):
    f = tmp_path / "x.yaml"
    f.write_text(content)
    with pytest.raises(ConfigFileError, match="x.yaml"):
        get_cfg().merge_from_file(str(f))


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigFileError, match="nope.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))
    f = tmp_path / "child.yaml"
    f.write_text('_BASE_: "gone.yaml"\n')
    with pytest.raises(ConfigFileError, match="gone.yaml"):
        get_cfg().merge_from_file(str(f))


def test_adelaidet_base_condinst_loads_and_is_accepted():
    cfg = load(ADELAIDET / "Base-CondInst.yaml")
    validate_cfg(cfg)
    # The file's values arrive, and the defaults it does not set stay AdelaiDet's.
    assert cfg.MODEL.CONDINST.MAX_PROPOSALS == 500 and cfg.MODEL.FCOS.THRESH_WITH_CTR is True
    assert tuple(cfg.SOLVER.STEPS) == (60000, 80000) and cfg.SOLVER.MAX_ITER == 90000
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    assert cfg.MODEL.FCOS.NMS_TH == 0.6 and cfg.MODEL.CONDINST.MASK_OUT_STRIDE == 4


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN"),
        ("MODEL.MOBILENET", True),
        ("MODEL.BACKBONE.ANTI_ALIAS", True),
        ("MODEL.FCOS.USE_DEFORMABLE", True),
        ("MODEL.FCOS.BOX_QUALITY", "quality"),
        ("MODEL.FCOS.NORM", "LN"),
        ("MODEL.FCOS.LOSS_NORMALIZER_CLS", "median"),
        ("MODEL.FCOS.YIELD_PROPOSAL", True),
        ("MODEL.FCOS.USE_RELU", False),
        ("MODEL.MASK_ON", False),
        ("MODEL.RESNETS.DEPTH", 77),
        ("MODEL.RESNETS.RES5_DILATION", 2),
        ("MODEL.TOP_MODULE.DIM", 32),
        ("MODEL.CONDINST.MASK_HEAD.USE_FP16", True),
        ("TEST.AUG.ENABLED", True),
        ("TEST.DETECTIONS_PER_IMAGE", 50),
        ("INPUT.CROP.TYPE", "square"),
        ("INPUT.CROP.SIZE", [0.0, 0.5]),
        ("SOLVER.AMP.DTYPE", "float8"),
        ("SOLVER.BASE_LR", -0.01),
        ("SOLVER.MAX_ITER", 0),
        ("MODEL.CONDINST.MASK_OUT_STRIDE", 3),
    ],
)
def test_each_unsupported_value_is_refused_by_name(key, value):
    cfg = get_cfg()
    cfg.merge_from_list([key, repr(value)])
    problems = refused_keys(cfg)
    assert problems == [key]


@pytest.mark.parametrize("steps", [(80000, 60000), (60000, 60000), (0, 60000)])
def test_bad_steps(steps):
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER = 90000
    cfg.SOLVER.STEPS = steps
    assert refused_keys(cfg) == ["SOLVER.STEPS"]


def test_inconsistent_features_are_refused():
    cfg = get_cfg()
    cfg.MODEL.FCOS.TOP_LEVELS = 1
    # P7 no longer exists, so the FCOS inputs, strides and sizes no longer match.
    assert "MODEL.FCOS.IN_FEATURES" in refused_keys(cfg)
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6"]
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64]
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256]
    validate_cfg(cfg)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    assert refused_keys(cfg) == ["MODEL.RESNETS.OUT_FEATURES"]


def test_all_problems_reported_at_once():
    cfg = get_cfg()
    cfg.MODEL.MOBILENET = True
    cfg.SOLVER.BASE_LR = 0.0
    cfg.INPUT.IS_ROTATE = True
    assert set(refused_keys(cfg)) == {
        "MODEL.MOBILENET",
        "SOLVER.BASE_LR",
        "INPUT.IS_ROTATE",
    }


def test_tiny_from_scratch_model_is_accepted():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    validate_cfg(cfg)
    cfg.MODEL.FPN.OUT_CHANNELS = 24
    assert refused_keys(cfg) == ["MODEL.FCOS.NORM"]  # GN's 32 groups
    cfg.MODEL.FCOS.NORM = "none"
    validate_cfg(cfg)


def _validate_nnsyncbn_worker(rank: int, init_file: str, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cfg = get_cfg()
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.CONDINST.MASK_BRANCH.NORM = "nnSyncBN"
        try:
            validate_cfg(cfg)
            results[rank] = []
        except UnsupportedConfigError as e:
            results[rank] = [p.split(" = ")[0] for p in e.problems]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torch_syncbn_refused_on_cpu_across_processes(tmp_path):
    import torch.multiprocessing as mp

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CONDINST.MASK_BRANCH.NORM = "nnSyncBN"
    validate_cfg(cfg)  # one process: torch's SyncBatchNorm is plain BatchNorm
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_validate_nnsyncbn_worker, args=(str(tmp_path / "init"), results), nprocs=2)
        results = dict(results)
    assert results == {r: ["MODEL.CONDINST.MASK_BRANCH.NORM"] for r in (0, 1)}
