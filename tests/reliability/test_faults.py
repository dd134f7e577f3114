"""Faults during training (issue 6): SIGKILL during checkpoint writes and at random moments of
training, --resume after it reproducing the uninterrupted run bit for bit, and a non-finite loss
stopping the run with the last good checkpoint intact."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from condinst_percep.checkpoint import Checkpointer

from .train_helpers import ENV, REPO, make_shapes, run_train_net, tiny_opts, train_cmd

pytestmark = pytest.mark.slow

# Saves checkpoints in a loop; each holds a 32 MB tensor filled with its iteration (so a save
# takes long enough to be killed inside) and a small "model" with the same value. Names cycle
# through three files to bound the disk used.
SAVE_LOOP = textwrap.dedent(
    """
    import sys
    import torch
    from condinst_percep.checkpoint import Checkpointer

    model = torch.nn.Linear(4, 4)
    checkpointer = Checkpointer(model, sys.argv[1], save_to_disk=True)
    for it in range(10**6):
        with torch.no_grad():
            model.weight.fill_(it)
            model.bias.fill_(it)
        checkpointer.save(f"model_{it % 3}", iteration=it, payload=torch.full((8 << 20,), float(it)))
    """
)


def _temp_files(folder) -> list[str]:
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def _check_last_checkpoint_complete(folder) -> int:
    """last_checkpoint names a complete file whose every tensor holds its iteration."""
    name = open(os.path.join(folder, "last_checkpoint")).read()
    assert not name.endswith(".tmp") and not name.startswith("."), name
    data = torch.load(os.path.join(folder, name), weights_only=True)
    it = data["iteration"]
    assert name == f"model_{it % 3}.pth"
    assert data["payload"].numel() == 8 << 20 and bool((data["payload"] == it).all())
    assert bool((data["model"]["weight"] == it).all())
    # and through the Checkpointer, as --resume reads it
    model = torch.nn.Linear(4, 4)
    assert Checkpointer(model, str(folder)).resume_or_load("", resume=True)["iteration"] == it
    assert bool((model.bias == it).all())
    return it


def test_sigkill_during_checkpoint_writes_never_leaves_a_corrupt_checkpoint(tmp_path):
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    folder = tmp_path / "ckpt"
    rng = random.Random(0)
    kills_inside_write, last_seen = 0, -1
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], env=ENV,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            # Half the kills wait for a temp file, i.e. land inside atomic_write between the
            # first byte and the rename; the others at random after a few saves.
            if attempt % 2 == 0:
                while time.monotonic() < deadline and not (
                    folder.exists() and (folder / "last_checkpoint").exists() and _temp_files(folder)
                ):
                    time.sleep(0.001)
            else:
                while time.monotonic() < deadline and not (folder / "last_checkpoint").exists():
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.5))
            inside = bool(_temp_files(folder))
            proc.kill()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        kills_inside_write += inside and bool(_temp_files(folder))
        it = _check_last_checkpoint_complete(folder)
        assert it >= last_seen
        last_seen = it
    # The test would catch a non-atomic save: several kills hit a write in progress.
    assert kills_inside_write >= 3
    # The next save removes the leftovers of killed writes.
    leftovers = _temp_files(folder)
    model = torch.nn.Linear(4, 4)
    Checkpointer(model, str(folder), save_to_disk=True).save("model_0", iteration=0,
                                                             payload=torch.zeros(8 << 20))
    assert leftovers and _temp_files(folder) == []


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"))


MAX_ITER = 40


def _opts(shapes, out, **extra):
    return tiny_opts(shapes, out, **{"SOLVER.MAX_ITER": MAX_ITER, "SOLVER.STEPS": "(30,)",
                                     "SOLVER.CHECKPOINT_PERIOD": 2, **extra})


def test_resume_after_random_sigkills_reproduces_the_uninterrupted_run(shapes, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_train_net(_opts(shapes, straight))
    assert done.returncode == 0, done.stderr[-3000:]

    rng = random.Random(1)
    resumed_from, kills = [], 0
    for attempt in range(4):
        flags = ("--resume",) if attempt else ()
        proc = subprocess.Popen(train_cmd(_opts(shapes, killed), *flags), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            start = killed / "last_checkpoint"
            before = start.read_text() if start.exists() else None
            deadline = time.monotonic() + 90
            # wait for this run's first checkpoint, then kill at a random moment
            while proc.poll() is None and time.monotonic() < deadline and (
                not start.exists() or start.read_text() == before
            ):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        if proc.returncode == 0:  # finished before the kill
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
        kills += 1
        name = start.read_text()
        data = torch.load(killed / name, weights_only=False)
        assert name == f"model_{data['iteration']:07d}.pth"
        resumed_from.append(data["iteration"] + 1)
    assert kills >= 2 and resumed_from == sorted(resumed_from)

    final = run_train_net(_opts(shapes, killed), "--resume")
    assert final.returncode == 0, final.stderr[-3000:]
    log = (killed / "log.txt").read_text()
    for it in resumed_from:
        assert f"Starting training from iteration {it}" in log
    a = torch.load(straight / "model_final.pth", weights_only=False)
    b = torch.load(killed / "model_final.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key  # bit for bit
    for key in ("optimizer", "scheduler"):
        assert str(a[key]) == str(b[key])
    # every periodic checkpoint the resumed chain wrote equals the uninterrupted run's
    for it in range(1, MAX_ITER - 1, 2):
        name = f"model_{it:07d}.pth"
        ma = torch.load(straight / name, weights_only=True)["model"]
        mb = torch.load(killed / name, weights_only=True)["model"]
        assert all(torch.equal(mb[k], v) for k, v in ma.items()), name
