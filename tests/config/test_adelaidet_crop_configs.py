"""AdelaiDet's ``INPUT.CROP`` settings validate. None of its CondInst or BoxInst configs enables
the crop, so the settings come from every AdelaiDet config that does (BlendMask, FCPose, BAText,
read from the AdelaiDet snapshot), put on each of our CondInst and BoxInst configs."""

import functools
import os
import tarfile

import pytest
import yaml

from condinst_percep.config import get_cfg
from condinst_percep.data import build_augmentation
from condinst_percep.data.crop import RandomCropWithInstance
from condinst_percep.engine import validate_cfg
from tests.conftest import REPO

OUR_CONFIGS = sorted(
    os.path.join(family, name)
    for family in ("CondInst", "BoxInst")
    for name in os.listdir(os.path.join(REPO, "configs", family))
    if name.endswith(".yaml")
)


@pytest.fixture
def adelaidet_crops(shared_dir) -> dict[str, dict]:
    (tarball,) = (shared_dir / "vendor").glob("AdelaiDet-*.tar.gz")
    return _crops_in(str(tarball))


@functools.lru_cache
def _crops_in(tarball: str) -> dict[str, dict]:
    """``INPUT.CROP`` of each AdelaiDet config that sets it, by path under configs/."""
    crops = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if "/configs/" in member.name and member.name.endswith(".yaml"):
                config = yaml.safe_load(tar.extractfile(member)) or {}
                crop = (config.get("INPUT") or {}).get("CROP")
                if crop is not None:
                    crops[member.name.split("/configs/", 1)[1]] = crop
    return crops


def test_no_adelaidet_condinst_or_boxinst_config_sets_the_crop(adelaidet_crops):
    assert not [name for name in adelaidet_crops if name.startswith(("CondInst/", "BoxInst/"))]


def test_every_adelaidet_crop_setting_validates_on_our_condinst_and_boxinst_configs(adelaidet_crops):
    enabled = {name: crop for name, crop in adelaidet_crops.items() if crop.get("ENABLED")}
    assert sorted(enabled) == [
        "BAText/Base-BAText.yaml", "BlendMask/550_R_50_dcni3_5x.yaml",
        "BlendMask/Panoptic/R_101_dcni3_5x.yaml", "BlendMask/Panoptic/R_50_dcni3_5x.yaml",
        "BlendMask/R_101_dcni3_5x.yaml", "FCPose/Base-FCPose.yaml",
    ]
    assert len(OUR_CONFIGS) == 21
    for name, crop in enabled.items():
        for ours in OUR_CONFIGS:
            cfg = get_cfg()
            cfg.merge_from_file(os.path.join(REPO, "configs", ours))
            opts = ["MODEL.DEVICE", "cpu"]
            for key, value in crop.items():
                opts += [f"INPUT.CROP.{key}", value]
            cfg.merge_from_list(opts)
            validate_cfg(cfg)
            first = build_augmentation(cfg, is_train=True)[0]
            assert isinstance(first, RandomCropWithInstance), (name, ours)
            expected = (crop.get("TYPE", "relative_range"), tuple(crop.get("SIZE", (0.9, 0.9))),
                        crop.get("CROP_INSTANCE", True))
            assert (first.crop_type, first.crop_size, first.crop_instance) == expected, (name, ours)
