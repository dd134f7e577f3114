"""tools/ablate.py on a run interrupted in training: it continues from the last checkpoint, bit
for bit the uninterrupted run, and only under the config it started with (tiny training runs in
child processes, as ablate starts them)."""
import os
import shutil
import subprocess

import pytest
import torch

from tests.conftest import REPO, load_tool
from tests.train_helpers import ENV, make_shapes, one_thread, tiny_opts

ablate = load_tool("ablate")
pytestmark = pytest.mark.slow

MAX_ITER = 4


def _train_step(shapes: str, output_dir) -> "ablate.Step":
    """The training step ablate plans for the shapes baseline, seed 3, on the tiny model, with a
    checkpoint after every iteration."""
    opts = tiny_opts(shapes, output_dir)
    extra = dict(zip(opts[::2], opts[1::2]))
    for key in ("SEED", "OUTPUT_DIR", "SOLVER.MAX_ITER", "SOLVER.STEPS"):
        extra.pop(key)
    args = ablate.parse_args(["--seeds", "3", "--max-iter", str(MAX_ITER),
                              "--output-dir", str(output_dir),
                              *[x for kv in extra.items() for x in kv]])
    variant, _, task = ablate.tasks(args)[0]
    assert variant.name == "baseline"
    return task.steps[0]


def _run(step) -> subprocess.CompletedProcess:
    return subprocess.run(step.argv, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(folder, "model_final.pth"), weights_only=False)["model"]


def _interrupted_after_iteration_1(source: str, folder: str) -> None:
    """``folder`` as a kill after iteration 1's checkpoint leaves it."""
    os.makedirs(folder)
    for name in ("config.yaml", "model_0000001.pth"):
        shutil.copy(os.path.join(source, name), folder)
    with open(os.path.join(folder, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")


def test_an_interrupted_run_continues_bit_for_bit_under_its_own_config_only(tmp_path):
    shapes = make_shapes(tmp_path / "data")
    straight = _train_step(shapes, tmp_path / "straight")
    done = _run(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _weights(straight.folder)

    # Killed in training: the step continues at iteration 2 and ends as the uninterrupted run.
    killed = _train_step(shapes, tmp_path / "killed")
    _interrupted_after_iteration_1(straight.folder, killed.folder)
    resumed = _run(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = open(os.path.join(killed.folder, "log.txt")).read()
    assert "Starting training from iteration 2" in log and "from iteration 0" not in log
    assert os.path.isfile(os.path.join(killed.folder, ablate.RESULT_FILE))
    continued = _weights(killed.folder)
    for key, value in reference.items():
        assert torch.equal(continued[key], value), key  # bit for bit

    # Killed after training, before its result was written: nothing is trained again.
    os.remove(os.path.join(straight.folder, ablate.RESULT_FILE))
    again = _run(straight)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Starting training from iteration {MAX_ITER}" in open(
        os.path.join(straight.folder, "log.txt")).read()
    assert os.path.isfile(os.path.join(straight.folder, ablate.RESULT_FILE))
    rescored = _weights(straight.folder)
    assert all(torch.equal(rescored[k], v) for k, v in reference.items())

    # Started under another learning rate: refused before anything in the folder changes.
    changed = _train_step(shapes, tmp_path / "changed")
    _interrupted_after_iteration_1(straight.folder, changed.folder)
    saved = os.path.join(changed.folder, "config.yaml")
    text = open(saved).read()
    assert "  BASE_LR: 0.01\n" in text
    with open(saved, "w") as f:
        f.write(text.replace("  BASE_LR: 0.01\n", "  BASE_LR: 0.02\n"))
    before = sorted(os.listdir(changed.folder))
    with one_thread(), pytest.raises(ValueError, match=(
        r"changed/baseline/seed_3 holds a run interrupted in training under another config \(1 key\(s\) differ "
        r"from its config.yaml: SOLVER.BASE_LR: 0.02 then, 0.01 now\).*Delete the folder")):
        ablate.run_one(changed.argv[3:])
    assert sorted(os.listdir(changed.folder)) == before
    assert "BASE_LR: 0.02" in open(saved).read()
