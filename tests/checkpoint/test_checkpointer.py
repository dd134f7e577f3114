import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from condinst_percep.checkpoint import (
    CheckpointFileError,
    CheckpointMismatchError,
    Checkpointer,
    caffe2_resnet_name,
    detectron2_url,
    resolve_path,
    torchvision_resnet_name,
)
from condinst_percep.modeling.backbone import build_backbone
from tests.conftest import SMALL_BACKBONE, tiny_cfg


class TinyCondInst(nn.Module):
    """Holds the real backbone plus heads named like CondInst's, for loading tests."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.mask_head = nn.Module()
        self.mask_head.register_buffer("sizes_of_interest", torch.tensor([64, 128, 256, 512, 1024]))
        self.mask_head.register_buffer("_iter", torch.zeros(1))
        self.mask_branch = nn.Sequential(nn.Conv2d(16, 8, 3), nn.BatchNorm2d(8))
        self.controller = nn.Conv2d(16, 169, 3)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    return model


def assert_same_tensors(a: nn.Module, b: nn.Module, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not any(s in k for s in skip):
            torch.testing.assert_close(sa[k], sb[k], msg=k)


# --- AdelaiDet / our .pth ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["wrapped", "bare", "ddp"])
def test_adelaidet_pth_loads_identical_tensors(tmp_path, layout):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    src = randomised(TinyCondInst(cfg), 1)
    sd = src.state_dict()
    # AdelaiDet's model zoo predates _iter; a re-saved dict may lack num_batches_tracked.
    for k in ["mask_head._iter", "mask_branch.1.num_batches_tracked"]:
        del sd[k]
    if layout == "ddp":
        sd = OrderedDict(("module." + k, v) for k, v in sd.items())
    path = tmp_path / "condinst.pth"
    torch.save({"model": sd, "iteration": 7} if layout != "bare" else sd, path)

    dst = TinyCondInst(cfg)
    extras = Checkpointer(dst).load(str(path))
    assert_same_tensors(src, dst, skip=("_iter", "num_batches_tracked"))
    assert extras == ({"iteration": 7} if layout != "bare" else {})


def test_sem_checkpoint_extra_keys_are_reported_and_skipped(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    src = randomised(TinyCondInst(cfg), 2)
    sd = src.state_dict()
    sd["mask_branch.seg_head.0.0.weight"] = torch.zeros(128, 256, 3, 3)
    sd["mask_branch.logits.bias"] = torch.zeros(80)
    path = tmp_path / "sem.pth"
    torch.save(sd, path)
    dst = TinyCondInst(cfg)
    checkpointer = Checkpointer(dst)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert set(report.skipped) == {"mask_branch.seg_head.0.0.weight", "mask_branch.logits.bias"}
    assert report.unexpected == [] and report.missing == [] and report.mismatched == {}
    assert "semantic-loss head" in report.table()
    assert_same_tensors(src, dst)


def test_shape_mismatch_is_reported_and_not_loaded(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    src = randomised(TinyCondInst(cfg), 3)
    sd = src.state_dict()
    sd["controller.weight"] = torch.zeros(233, 16, 3, 3)  # a BoxInst controller
    sd["extra.thing"] = torch.zeros(1)
    torch.save(sd, tmp_path / "boxinst.pth")
    dst = TinyCondInst(cfg)
    before = dst.controller.weight.detach().clone()
    checkpointer = Checkpointer(dst)
    checkpointer.load(str(tmp_path / "boxinst.pth"))
    report = checkpointer.last_report
    assert report.mismatched == {"controller.weight": ((233, 16, 3, 3), (169, 16, 3, 3))}
    assert report.unexpected == ["extra.thing"]
    assert torch.equal(dst.controller.weight, before)
    assert "shape mismatch" in report.table() and "extra.thing" in report.table()


def test_little_loaded_is_an_error(tmp_path):
    r18 = randomised(TinyCondInst(tiny_cfg(**SMALL_BACKBONE[18])), 4)
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointMismatchError, match="r18.pth"):
        Checkpointer(TinyCondInst(tiny_cfg(**SMALL_BACKBONE[50]))).load(str(tmp_path / "r18.pth"))
    heads_only = {k: v for k, v in r18.state_dict().items() if not k.startswith("backbone.")}
    torch.save(heads_only, tmp_path / "heads.pth")
    with pytest.raises(CheckpointMismatchError, match=r"0 of the .* backbone parameters"):
        Checkpointer(TinyCondInst(tiny_cfg(**SMALL_BACKBONE[18]))).load(str(tmp_path / "heads.pth"))


# --- detectron2's Caffe2 ImageNet pickles --------------------------------------------------------


def caffe2_names_for(our_key: str) -> str | None:
    """Independent inverse of the Caffe2 mapping, written from detectron2's naming scheme."""
    key = our_key[len("backbone.bottom_up.") :]
    parts = key.split(".")
    bn = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    if parts[0] == "stem":
        is_conv = parts[-1] == "weight" and len(parts) == 3
        return "conv1_w" if is_conv else f"res_conv1_bn_{bn[parts[-1]]}"
    stage, block, module = parts[0][3], parts[1], parts[2]
    branches = {
        "shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"
    }
    branch = branches[module]
    base = f"res{stage}_{block}_{branch}"
    return base + "_w" if len(parts) == 4 else f"{base}_bn_{bn[parts[-1]]}"


@pytest.mark.parametrize("depth, blocks", [(50, [3, 4, 6, 3]), (101, [3, 4, 23, 3])])
def test_caffe2_mapping_covers_full_msra_resnet(depth, blocks):
    names = ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b", "fc1000_w", "fc1000_b"]
    for stage, n in zip(range(2, 6), blocks):
        for b in range(n):
            branches = ["branch2a", "branch2b", "branch2c"] + (["branch1"] if b == 0 else [])
            for br in branches:
                names += [f"res{stage}_{b}_{br}_{s}" for s in ("w", "bn_s", "bn_b")]
    mapped = {caffe2_resnet_name(n) for n in names} - {None}
    assert len(mapped) == len(names) - 2
    cfg = tiny_cfg(**SMALL_BACKBONE[depth])
    ours = {
        "backbone." + k
        for k in build_backbone(cfg).bottom_up.state_dict(prefix="bottom_up.")
        if not k.endswith(("running_mean", "running_var"))
    }
    assert mapped == ours


def write_caffe2_pickle(model: nn.Module, path, wrap_in_blobs: bool):
    blobs = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone.bottom_up.") and not k.endswith(("running_mean", "running_var")):
            blobs[caffe2_names_for(k)] = v.numpy().copy()
    blobs["fc1000_w"] = np.zeros((1000, 64), np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs} if wrap_in_blobs else blobs, f, protocol=2)


@pytest.mark.parametrize("wrap_in_blobs", [False, True])
def test_caffe2_pickle_loads_identical_tensors(tmp_path, wrap_in_blobs):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    src = randomised(TinyCondInst(cfg), 5)
    path = tmp_path / "R-50.pkl"
    write_caffe2_pickle(src, path, wrap_in_blobs)
    dst = TinyCondInst(cfg)
    checkpointer = Checkpointer(dst, cfg=cfg)
    checkpointer.load(str(path))
    a, b = src.backbone.bottom_up.state_dict(), dst.backbone.bottom_up.state_dict()
    for k in a:
        if k.endswith("running_mean"):
            assert torch.all(b[k] == 0), k  # MSRA blobs fold statistics into scale/bias
        elif k.endswith("running_var"):
            assert torch.all(b[k] == 1), k
        else:
            torch.testing.assert_close(a[k], b[k], msg=k)
    report = checkpointer.last_report
    assert set(report.skipped) == {"fc1000_w", "fc1000_b"}
    assert all(not k.startswith("backbone.bottom_up.") for k in report.missing)
    assert any(k.startswith("backbone.fpn_lateral3") for k in report.missing)


def test_caffe2_pickle_refuses_torchvision_conventions(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    write_caffe2_pickle(TinyCondInst(cfg), tmp_path / "R-50.pkl", False)
    cfg.INPUT.FORMAT = "RGB"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        Checkpointer(TinyCondInst(cfg), cfg=cfg).load(str(tmp_path / "R-50.pkl"))


def test_unknown_caffe2_blob_is_an_error(tmp_path):
    with open(tmp_path / "odd.pkl", "wb") as f:
        blobs = {"conv1_w": np.zeros((8, 3, 7, 7), np.float32), "res2_0_branch2d_w": np.zeros(1)}
        pickle.dump(blobs, f)
    with pytest.raises(CheckpointFileError, match="res2_0_branch2d_w"):
        Checkpointer(TinyCondInst(tiny_cfg(**SMALL_BACKBONE[50]))).load(str(tmp_path / "odd.pkl"))


def test_detectron2_model_zoo_pickle(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[50])
    src = randomised(TinyCondInst(cfg), 6)
    model = {
        k[len("backbone.bottom_up.") :]: v.numpy()
        for k, v in src.state_dict().items()
        if k.startswith("backbone.bottom_up.")
    }
    with open(tmp_path / "tv-R-50.pkl", "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f)
    dst = TinyCondInst(cfg)
    Checkpointer(dst).load(str(tmp_path / "tv-R-50.pkl"))
    assert_same_tensors(src.backbone.bottom_up, dst.backbone.bottom_up)


# --- torchvision ResNet --------------------------------------------------------------------------


def torchvision_key_for(our_key: str) -> str:
    """Independent inverse of the torchvision mapping."""
    parts = our_key[len("backbone.bottom_up.") :].split(".")
    if parts[0] == "stem":
        return "conv1.weight" if len(parts) == 3 else f"bn1.{parts[-1]}"
    layer = f"layer{int(parts[0][3]) - 1}.{parts[1]}"
    if parts[2] == "shortcut":
        if len(parts) == 4:
            return f"{layer}.downsample.0.weight"
        return f"{layer}.downsample.1.{parts[-1]}"
    if len(parts) == 4:
        return f"{layer}.{parts[2]}.weight"
    return f"{layer}.bn{parts[2][4]}.{parts[-1]}"


def torchvision_cfg(depth):
    cfg = tiny_cfg(**SMALL_BACKBONE[depth], **{"MODEL.RESNETS.STRIDE_IN_1X1": False,
                                               "MODEL.RESNETS.NORM": "BN"})
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    return cfg


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_loads_identical_tensors(tmp_path, depth):
    cfg = torchvision_cfg(depth)
    src = randomised(TinyCondInst(cfg), 7)
    sd = OrderedDict()
    for k, v in src.state_dict().items():
        if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked"):
            sd[torchvision_key_for(k)] = v
            if k.endswith("running_var"):
                counter = torchvision_key_for(k).replace("running_var", "num_batches_tracked")
                sd[counter] = torch.tensor(5)
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 64), torch.zeros(1000)
    torch.save(sd, tmp_path / f"resnet{depth}.pth")
    dst = TinyCondInst(cfg)
    checkpointer = Checkpointer(dst, cfg=cfg)
    checkpointer.load(str(tmp_path / f"resnet{depth}.pth"))
    # FREEZE_AT 2 turned stem/res2 BNs into FrozenBN, which has no num_batches_tracked.
    skip = ("num_batches_tracked",)
    assert_same_tensors(src.backbone.bottom_up, dst.backbone.bottom_up, skip=skip)
    assert set(checkpointer.last_report.skipped) == {"fc.weight", "fc.bias"}
    assert checkpointer.last_report.unexpected == []


def test_torchvision_names():
    cases = {
        "layer4.2.bn3.running_var": "res5.2.conv3.norm.running_var",
        "layer1.0.downsample.1.bias": "res2.0.shortcut.norm.bias",
        "bn1.num_batches_tracked": "stem.conv1.norm.num_batches_tracked",
    }
    for tv, ours in cases.items():
        assert torchvision_resnet_name(tv) == "backbone.bottom_up." + ours
    assert torchvision_resnet_name("fc.weight") is None
    with pytest.raises(KeyError):
        torchvision_resnet_name("layer5.0.conv1.weight")


def test_torchvision_weights_refuse_msra_settings(tmp_path):
    cfg = torchvision_cfg(50)
    sd = {"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(4, 8, 1, 1)}
    torch.save(sd, tmp_path / "tv.pth")
    msra = tiny_cfg(**SMALL_BACKBONE[50])
    with pytest.raises(ValueError) as e:
        Checkpointer(TinyCondInst(cfg), cfg=msra).load(str(tmp_path / "tv.pth"))
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "STRIDE_IN_1X1", "tv.pth"):
        assert key in str(e.value)


# --- bad files, paths, URLs ----------------------------------------------------------------------


def test_corrupt_files_name_the_file(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[18])
    good = tmp_path / "good.pth"
    torch.save(TinyCondInst(cfg).state_dict(), good)
    data = good.read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "text.pth": b"not a checkpoint\n",
        "empty.pth": b"",
        "truncated.pkl": pickle.dumps({"conv1_w": np.zeros((8, 3, 7, 7), np.float32)})[:40],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointFileError, match=name):
            Checkpointer(TinyCondInst(cfg)).load(str(tmp_path / name))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointFileError, match="list.pth"):
        Checkpointer(TinyCondInst(cfg)).load(str(tmp_path / "list.pth"))
    torch.save({"optimizer": {}, "iteration": 3}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointFileError, match="nomodel.pth"):
        Checkpointer(TinyCondInst(cfg)).load(str(tmp_path / "nomodel.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Checkpointer(TinyCondInst(cfg)).load(str(tmp_path / "missing.pth"))
    assert Checkpointer(TinyCondInst(cfg)).load("") == {}


def test_detectron2_url_and_cache(tmp_path):
    assert detectron2_url("detectron2://ImageNetPretrained/MSRA/R-101.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl"
    )
    assert detectron2_url("/data/R-50.pkl") == "/data/R-50.pkl"
    # A file already in the cache is used without any download.
    cached = tmp_path / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    local = resolve_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl", cache_dir=str(tmp_path))
    assert os.path.samefile(local, cached)


# --- saving --------------------------------------------------------------------------------------


def test_save_resume_and_atomicity(tmp_path):
    cfg = tiny_cfg(**SMALL_BACKBONE[18])
    model = randomised(TinyCondInst(cfg), 8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.controller.weight.sum().backward()
    opt.step()
    ck = Checkpointer(model, str(tmp_path), save_to_disk=True, optimizer=opt)
    ck.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    fresh = TinyCondInst(cfg)
    trainable = [p for p in fresh.parameters() if p.requires_grad]
    fresh_opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    extras = Checkpointer(fresh, str(tmp_path), optimizer=fresh_opt).resume_or_load("", resume=True)
    assert extras == {"iteration": 9}
    assert_same_tensors(model, fresh)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()

    # A save that fails half-way leaves the previous file, and the pointer, untouched.
    before = (tmp_path / "model_0000009.pth").read_bytes()
    with pytest.raises(Exception):
        ck.save("model_0000009", iteration=10, unpicklable=lambda: None)
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    extras = Checkpointer(TinyCondInst(cfg)).load(str(tmp_path / "model_0000009.pth"))
    assert extras["iteration"] == 9 and set(extras) == {"iteration", "optimizer"}


def test_save_is_skipped_off_the_main_process(tmp_path):
    ck = Checkpointer(TinyCondInst(tiny_cfg(**SMALL_BACKBONE[18])), str(tmp_path), save_to_disk=False)
    ck.save("model_final")
    assert os.listdir(tmp_path) == []
