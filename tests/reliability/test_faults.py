"""Faults during training: SIGKILL during checkpoint writes and at random moments of
training, --resume after it reproducing the uninterrupted run bit for bit, and a non-finite loss
stopping the run with the last good checkpoint intact."""

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from condinst_percep.checkpoint import Checkpointer
from tests.train_helpers import ENV, make_shapes, run_train_net, tiny_opts, train_cmd

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


def _check_last_checkpoint_complete(folder) -> None:
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


def test_sigkill_during_checkpoint_writes_never_leaves_a_corrupt_checkpoint(tmp_path):
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    folder = tmp_path / "ckpt"
    rng = random.Random(0)
    kills_inside_write = 0
    for attempt in range(6):
        # leftovers of the previous kill (until this run's first save removes them) do not count
        before = set(_temp_files(folder)) if folder.exists() else set()
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], env=ENV,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            # Half the kills (the last one included) wait for a new temp file, i.e. land inside
            # atomic_write between the first byte and the rename; the others come at random.
            if attempt % 2 == 1:
                while time.monotonic() < deadline and not (
                    folder.exists() and (folder / "last_checkpoint").exists()
                    and set(_temp_files(folder)) - before
                ):
                    time.sleep(0.001)
            else:
                while time.monotonic() < deadline and not (folder / "last_checkpoint").exists():
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.5))
            writing = set(_temp_files(folder)) - before
            proc.kill()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        # the temp file seen just before the kill is still there: the kill hit its write
        kills_inside_write += bool(writing & set(_temp_files(folder)))
        _check_last_checkpoint_complete(folder)
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
    # Both random parts of a step, as AdelaiDet's configs have them: a short side drawn per
    # image, and a random sample of the positive locations for the mask loss (MAX_PROPOSALS
    # 500 there; 2 clips every image here). A resumed run must redraw both as they were.
    return tiny_opts(shapes, out, **{"SOLVER.MAX_ITER": MAX_ITER, "SOLVER.STEPS": "(30,)",
                                     "SOLVER.CHECKPOINT_PERIOD": 2,
                                     "INPUT.MIN_SIZE_TRAIN": "(40, 44, 48)",
                                     "MODEL.CONDINST.MAX_PROPOSALS": 2, **extra})


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


def test_non_finite_loss_names_term_and_iteration_and_keeps_last_checkpoint(shapes, tmp_path):
    # A constant lr of 1e10 (no warm-up, no steps: the lr does not depend on MAX_ITER) makes
    # the weights explode, still finite and checkpointed, until every loss is NaN.
    diverge = {"SOLVER.BASE_LR": "1e10", "SOLVER.WARMUP_ITERS": 0, "SOLVER.STEPS": "()",
               "SOLVER.CHECKPOINT_PERIOD": 1}
    out = tmp_path / "diverged"
    proc = run_train_net(tiny_opts(shapes, out, **diverge))
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("FloatingPointError")]
    match = re.match(r"FloatingPointError: Loss became non-finite at iteration (\d+): ", error[-1])
    assert match, error
    bad_iter = int(match.group(1))
    assert bad_iter >= 1 and "loss_fcos_cls = nan" in error[-1] and "loss_mask = nan" in error[-1]
    assert proc.stderr.rstrip().endswith(error[-1])  # the last line says what happened
    last = f"model_{bad_iter - 1:07d}.pth"
    assert (out / "last_checkpoint").read_text() == last
    assert not (out / f"model_{bad_iter:07d}.pth").exists() and not _temp_files(out)
    kept = torch.load(out / last, weights_only=True)
    assert kept["iteration"] == bad_iter - 1
    assert all(bool(torch.isfinite(v).all()) for v in kept["model"].values() if v.is_floating_point())

    # The same run stopped cleanly before the failing iteration holds bit for bit the same
    # weights: the failing iteration wrote nothing into the checkpoint.
    clean = tmp_path / "clean"
    assert run_train_net(tiny_opts(shapes, clean, **diverge, **{"SOLVER.MAX_ITER": bad_iter})).returncode == 0
    reference = torch.load(clean / "model_final.pth", weights_only=True)
    assert reference["iteration"] == bad_iter - 1
    for key, value in reference["model"].items():
        assert torch.equal(kept["model"][key], value), key
    # and --resume from it fails again at the same iteration, naming it
    again = run_train_net(tiny_opts(shapes, out, **diverge), "--resume")
    assert f"Loss became non-finite at iteration {bad_iter}" in again.stderr.splitlines()[-1]


class _SqrtAtZero(torch.nn.Module):
    """A finite loss whose gradient is NaN from iteration ``bad_iter`` on (d sqrt(x)/dx at 0)."""

    def __init__(self, bad_iter: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.bad_iter, self.calls = bad_iter, 0

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        loss = self.linear(x).pow(2).mean()
        if self.calls >= self.bad_iter:
            loss = loss + torch.sqrt(self.linear.bias * 0).sum()
        self.calls += 1
        return {"loss_fit": loss}


def test_non_finite_gradient_with_finite_loss_stops_before_the_step(tmp_path):
    from condinst_percep.engine import hooks
    from condinst_percep.engine.train_loop import HookBase, SimpleTrainer

    torch.manual_seed(0)
    model = _SqrtAtZero(bad_iter=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = [[{"x": torch.randn(3)}] for _ in range(6)]
    trainer = SimpleTrainer(model, batches, optimizer)
    checkpointer = Checkpointer(model, str(tmp_path), save_to_disk=True, optimizer=optimizer)
    saved = {}

    class RecordBytes(HookBase):
        def after_step(self):
            name = (tmp_path / "last_checkpoint").read_text()
            saved[name] = (_sha256(tmp_path / name), {k: v.clone() for k, v in model.state_dict().items()})

    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, 1), RecordBytes()])
    with pytest.raises(FloatingPointError, match=r"Gradient became non-finite at iteration 3 .*: linear\.bias;"):
        trainer.train(0, 6)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    for name, (digest, _) in saved.items():
        assert _sha256(tmp_path / name) == digest, name
    # the step was not taken: the weights are those of the last checkpoint, all finite
    for key, value in saved["model_0000002.pth"][1].items():
        assert torch.equal(model.state_dict()[key], value) and bool(torch.isfinite(value).all())


def test_sigterm_to_the_parent_of_num_gpus_2_stops_both_workers_with_a_checkpoint(shapes, tmp_path):
    out = tmp_path / "ddp"
    opts = tiny_opts(shapes, out, **{"SOLVER.MAX_ITER": 2000, "SOLVER.STEPS": "()",
                                     "SOLVER.CHECKPOINT_PERIOD": 5})
    proc = subprocess.Popen(train_cmd(opts, "--num-gpus", "2"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not (out / "last_checkpoint").exists():
            time.sleep(0.05)
        workers = [pid for pid in _children(proc.pid) if "resource_tracker" not in _cmdline(pid)]
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGTERM)  # the parent only, as `kill <pid>` does
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not any(_alive(pid) for pid in workers)  # no orphaned workers
    log = (out / "log.txt").read_text()
    assert "Received SIGTERM: stopping after this iteration" in log
    name = (out / "last_checkpoint").read_text()
    stopped_after = torch.load(out / name, weights_only=True)["iteration"]
    assert name == f"model_{stopped_after:07d}.pth" and stopped_after < 1999
    assert f"Training stopped by a signal before iteration {stopped_after + 1}" in log
    # both ranks stopped at the same iteration (rank 1 logs to its own file)
    rank1 = (out / "log.txt.rank1").read_text()
    assert "Received SIGTERM" in rank1
    assert f"Training stopped by a signal before iteration {stopped_after + 1}" in rank1


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
