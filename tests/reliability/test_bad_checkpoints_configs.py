"""Bad checkpoints and bad configs through train_net.py: every one is refused before
the first iteration with an error naming the file, or the key and its value."""

import os
import pickle
import shutil
import zipfile

import pytest
import torch

from condinst_percep.checkpoint import CheckpointFileError, CheckpointMismatchError
from condinst_percep.config import ConfigKeyError
from condinst_percep.config.validate import UnsupportedConfigError
from tests.train_helpers import CONFIG, make_shapes, one_thread, run_main, tiny_opts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # (The loggers train_net.main sets up are put back after each test by tests/conftest.py.)
    with one_thread():
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"))


def short(shapes, out, **extra):
    return tiny_opts(shapes, out, **{"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": "()", **extra})


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A 2-iteration run: its checkpoints are real files in our format."""
    out = tmp_path_factory.mktemp("trained")
    run_main(short(shapes, out))
    return out


class _NotWeights:
    pass


def _write_bad_file(kind: str, folder, good: str) -> str:
    path = os.path.join(str(folder), {"pickle_of_list": "x.pkl"}.get(kind, f"{kind}.pth"))
    data = open(good, "rb").read()
    if kind == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "random_bytes":
        open(path, "wb").write(os.urandom(4096))
    elif kind == "text":
        open(path, "w").write("MODEL:\n  WEIGHTS: oops\n")
    elif kind == "zip_not_torch":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("weights.txt", "not a tensor")
    elif kind == "pickle_of_object":
        with open(path, "wb") as f:
            pickle.dump(_NotWeights(), f)
    elif kind == "pickle_of_list":
        with open(path, "wb") as f:
            pickle.dump([1, 2, 3], f)
    elif kind == "torch_list":
        torch.save([torch.zeros(2)], path)
    return path


BAD_FILES = {
    "truncated": "is not a readable torch checkpoint .*PytorchStreamReader failed reading zip archive",
    "empty": r"\(0 bytes\) is not a readable torch checkpoint .*: the file is empty$",
    "random_bytes": "is not a readable torch checkpoint",
    "text": "is not a readable torch checkpoint",
    "zip_not_torch": "is not a readable torch checkpoint .*RuntimeError: file in archive is not in a subdirectory",
    "pickle_of_object": "is not a readable torch checkpoint .*UnpicklingError",
    "pickle_of_list": "holds a list, not a dict of weights",
    "torch_list": "holds a list, not a checkpoint dict",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_model_weights_file_is_named(kind, trained, shapes, tmp_path):
    path = _write_bad_file(kind, tmp_path, str(trained / "model_final.pth"))
    with pytest.raises(CheckpointFileError, match=BAD_FILES[kind]) as info:
        run_main(short(shapes, tmp_path / "out", **{"MODEL.WEIGHTS": path}))
    message = str(info.value)
    assert message.startswith(f"'{path}' ") and "\n" not in message and len(message) < len(path) + 300
    assert not list((tmp_path / "out").glob("model_*.pth"))  # refused before training


@pytest.mark.parametrize("kind", ["truncated", "random_bytes", "text"])
def test_bad_file_named_by_last_checkpoint_is_named_on_resume(kind, trained, shapes, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = _write_bad_file(kind, out, str(trained / "model_final.pth"))
    (out / "last_checkpoint").write_text(os.path.basename(path))
    with pytest.raises(CheckpointFileError, match=rf"'{path}' \(\d+ bytes\) is not a readable torch checkpoint"):
        run_main(["--resume"] + short(shapes, out))


def test_last_checkpoint_naming_a_missing_file(trained, shapes, tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match="model_0000099.pth' not found"):
        run_main(["--resume"] + short(shapes, tmp_path))


def test_weights_of_the_wrong_shape(trained, shapes, tmp_path):
    state = torch.load(trained / "model_final.pth", weights_only=True)["model"]
    wrong = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.dim() else v for k, v in state.items()}
    path = tmp_path / "wrong.pth"
    torch.save({"model": wrong}, path)
    with pytest.raises(CheckpointMismatchError, match=f"0 of the .* backbone parameters .* found in '{path}'"):
        run_main(short(shapes, tmp_path / "out", **{"MODEL.WEIGHTS": str(path)}))


def test_resume_refuses_a_checkpoint_of_another_config(trained, shapes, tmp_path):
    # Fine-tuning may load part of a model; --resume must restore all of it.
    shutil.copy(trained / "model_0000000.pth", tmp_path / "model_0000000.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000000.pth")
    with pytest.raises(CheckpointMismatchError, match=r"--resume: '.*model_0000000.pth' .* does not "
                       r"hold this run's full state.*cls_logits.weight: checkpoint"):
        run_main(["--resume"] + short(shapes, tmp_path, **{"MODEL.FCOS.NUM_CLASSES": 3}))
    # and a checkpoint without optimizer and iteration (a model-zoo file) is not a run's state
    torch.save({"model": torch.load(trained / "model_0000000.pth", weights_only=True)["model"]},
               tmp_path / "model_0000000.pth")
    with pytest.raises(CheckpointMismatchError, match="iteration: missing.*optimizer: missing"):
        run_main(["--resume"] + short(shapes, tmp_path))


# --- configs ------------------------------------------------------------------------------------


def test_unknown_key_in_yaml_names_file_and_closest_keys(shapes, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f'_BASE_: "{CONFIG}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    with pytest.raises(ConfigKeyError) as info:
        run_main(short(shapes, tmp_path / "out"), config=config)
    assert f"unknown config key 'SOLVER.BASE_LRR' in config file '{config}'" in str(info.value)
    assert "closest valid keys: SOLVER.BASE_LR" in str(info.value)


def test_unknown_override_names_closest_keys(shapes, tmp_path):
    with pytest.raises(ConfigKeyError, match="unknown config key 'SOLVER.MAX_ITERS' in command-line "
                       "overrides; closest valid keys: SOLVER.MAX_ITER"):
        run_main(short(shapes, tmp_path) + ["SOLVER.MAX_ITERS", "5"])


BAD_VALUES = [
    ({"SOLVER.BASE_LR": -0.01}, "SOLVER.BASE_LR = -0.01: must be positive"),
    ({"SOLVER.BASE_LR": 0.0}, "SOLVER.BASE_LR = 0.0: must be positive"),
    ({"SOLVER.MAX_ITER": 0}, "SOLVER.MAX_ITER = 0: must be a positive integer"),
    ({"SOLVER.MAX_ITER": -5}, "SOLVER.MAX_ITER = -5: must be a positive integer"),
    ({"SOLVER.STEPS": "(5, 3)"}, "SOLVER.STEPS = (5, 3): must be positive and strictly increasing"),
    ({"SOLVER.IMS_PER_BATCH": 0}, "SOLVER.IMS_PER_BATCH = 0: IMS_PER_BATCH and CHECKPOINT_PERIOD must be positive"),
    ({"SOLVER.CHECKPOINT_PERIOD": 0}, "IMS_PER_BATCH and CHECKPOINT_PERIOD must be positive"),
    ({"MODEL.PERCEP.ENABLED": True, "MODEL.CONDINST.MASK_HEAD.NAME": "PercepMaskHead",
      "MODEL.PERCEP.TARGET": "gt", "MODEL.PERCEP.STRUCTURE": "()", "MODEL.PERCEP.WIDTHS": "()"},
     "MODEL.PERCEP.STRUCTURE = (): needs at least one block"),
    ({"MODEL.BOXINST.ENABLED": True, "MODEL.PERCEP.ENABLED": True,
      "MODEL.CONDINST.MASK_HEAD.NAME": "PercepMaskHead", "MODEL.PERCEP.TARGET": "gt"},
     "MODEL.PERCEP.TARGET = 'gt': BoxInst (MODEL.BOXINST.ENABLED) has no ground-truth masks"),
]


@pytest.mark.parametrize("extra,message", BAD_VALUES, ids=[next(iter(e)) + "=" + str(next(iter(e.values())))
                                                          for e, _ in BAD_VALUES])
def test_invalid_values_refused_before_training(extra, message, shapes, tmp_path):
    with pytest.raises(UnsupportedConfigError) as info:
        run_main(short(shapes, tmp_path, **extra))
    assert message in str(info.value)
    assert not list(tmp_path.glob("model_*.pth"))


def test_teacher_with_other_strides_refused_when_the_model_is_built(shapes, tmp_path):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  FCOS:\n    FPN_STRIDES: [8, 16, 32, 64, 256]\n')
    percep = {"MODEL.PERCEP.ENABLED": True, "MODEL.CONDINST.MASK_HEAD.NAME": "PercepMaskHead",
              "MODEL.PERCEP.TARGET": "teacher", "MODEL.TEACHER.CONFIG_FILE": str(teacher),
              "MODEL.TEACHER.WEIGHTS": str(tmp_path / "teacher.pth")}
    with pytest.raises(ValueError, match=r"MODEL.FCOS.FPN_STRIDES: teacher \[8, 16, 32, 64, 256\] vs "
                       r"student \[8, 16, 32, 64, 128\]"):
        run_main(short(shapes, tmp_path / "out", **percep))
    assert not list((tmp_path / "out").glob("model_*.pth"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_is_refused_by_name(device, shapes, tmp_path):
    # detectron2's default MODEL.DEVICE is "cuda"; a CPU machine gets the key and the fix,
    # not torch's "Torch not compiled with CUDA enabled" from inside Module.to.
    with pytest.raises(ValueError, match=rf"^MODEL.DEVICE = '{device}', but CUDA cannot be used "
                       r"here \(.*\); add 'MODEL.DEVICE cpu'"):
        run_main(short(shapes, tmp_path, **{"MODEL.DEVICE": device}))
    assert not list(tmp_path.glob("model_*.pth"))
