"""tools/ablate_jobs.py: runs side by side in slots, a student after its teacher, steps in order,
failures named; real child processes (a few lines of Python each), no training."""
import os
import sys

import pytest

from tests.conftest import load_tool

jobs = load_tool("ablate_jobs")
ablate = load_tool("ablate")

# argv: name, folder, log, seconds, exit status, write the result (1/0).
CHILD = """
import os, sys, time
name, folder, log, seconds, status, write = sys.argv[1:7]
with open(log, "a") as f:
    f.write(f"start {name} {time.time()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\\n")
print(f"output of {name}")
time.sleep(float(seconds))
if write == "1":
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "done"), "w").close()
with open(log, "a") as f:
    f.write(f"end {name} {time.time()}\\n")
sys.exit(int(status))
"""


def _done(folder):
    return os.path.exists(os.path.join(folder, "done"))


def _step(tmp_path, name, seconds, status=0, write=True):
    folder = str(tmp_path / name)
    argv = [sys.executable, "-c", CHILD, name, folder, str(tmp_path / "events"), str(seconds),
            str(status), "1" if write else "0"]
    return jobs.Step(argv, folder, label=f"step {name}")


def _events(tmp_path):
    """{name: (start, end, CUDA_VISIBLE_DEVICES)} of every step that ran."""
    starts, ends = {}, {}
    for line in (tmp_path / "events").read_text().splitlines():
        kind, name, t, *gpu = line.split()
        (starts if kind == "start" else ends)[name] = (float(t), *gpu)
    return {name: (starts[name][0], ends[name][0], starts[name][1]) for name in starts}


def test_slots_run_side_by_side_and_a_student_starts_after_its_teacher(tmp_path):
    teacher = jobs.Task("teacher", [_step(tmp_path, "teacher", 0.8)],
                        produces=str(tmp_path / "teacher" / "model_final.pth"))
    student = jobs.Task("student", [_step(tmp_path, "student1", 0.2),
                                    _step(tmp_path, "student2", 0.2)],
                        needs=teacher.produces)
    other = jobs.Task("other", [_step(tmp_path, "other", 0.4)])
    resumed = jobs.Task("resumed", [_step(tmp_path, "resumed1", 0.2),
                                    _step(tmp_path, "resumed2", 0.2)])
    os.makedirs(tmp_path / "resumed1")
    (tmp_path / "resumed1" / "done").touch()  # a finished step of an interrupted ablation
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    jobs.run_tasks([teacher, student, other, resumed], slots, _done, str(tmp_path), poll_s=0.02)

    ran = _events(tmp_path)
    assert set(ran) == {"teacher", "student1", "student2", "other", "resumed2"}
    assert all(_done(str(tmp_path / name)) for name in ran)
    # The student waited for its teacher although a slot was free; its steps ran in order, in
    # one slot.
    assert ran["student1"][0] >= ran["teacher"][1]
    assert ran["student2"][0] >= ran["student1"][1] and ran["student2"][2] == ran["student1"][2]
    # Never more than two at once, and two at once while the teacher trained.
    moments = sorted(t for start, end, _ in ran.values() for t in (start, end))
    most = max(sum(s <= t < e for s, e, _ in ran.values()) for t in moments)
    assert most == 2 and ran["other"][0] < ran["teacher"][1]
    # With two slots each step's output is in its own folder.
    log = tmp_path / "other" / jobs.LOG_FILE
    assert log.read_text().strip() == "output of other"


def test_a_failed_run_stops_new_ones_lets_running_ones_finish_and_is_named(tmp_path):
    failing = jobs.Task("failing seed 1", [_step(tmp_path, "failing", 0.1, status=3)])
    running = jobs.Task("running seed 1", [_step(tmp_path, "running", 0.6)])
    waiting = jobs.Task("waiting seed 2", [_step(tmp_path, "waiting", 0.1)])
    with pytest.raises(RuntimeError) as error:
        jobs.run_tasks([failing, running, waiting], [{}, {}], _done, str(tmp_path), poll_s=0.02)
    message = str(error.value)
    assert "failing seed 1: exit status 3" in message and jobs.LOG_FILE in message
    assert "not started: waiting seed 2" in message
    assert _done(str(tmp_path / "running")) and set(_events(tmp_path)) == {"failing", "running"}


def test_a_run_that_exits_cleanly_without_its_result_is_a_failure(tmp_path):
    task = jobs.Task("silent", [_step(tmp_path, "silent", 0.0, write=False),
                                _step(tmp_path, "after", 0.0)])
    with pytest.raises(RuntimeError, match=r"silent: no result in .*silent \(see the output above"):
        jobs.run_tasks([task], [{}], _done, str(tmp_path), poll_s=0.02)
    assert set(_events(tmp_path)) == {"silent"}


def test_ablate_slots_and_the_teacher_dependency(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = ablate.parse_args(["--sweep", "facade", "--seeds", "0", "1", "--jobs", "2",
                              "--output-dir", str(tmp_path)])
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert ablate.slots(args) == [{"OMP_NUM_THREADS": threads}] * 2
    assert ablate.slots(ablate.parse_args(["--gpus", "2", "3"])) == [
        {"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "3"}]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ablate.slots(args) == [{}, {}]

    planned = {task.name: task for _, _, task in ablate.tasks(args)}
    teacher = planned["teacher seed 0"]
    assert len(teacher.steps) == 1  # a teacher is not scored on test
    for name in ("+loss (teacher) seed 0", "+loss (teacher) seed 1"):
        assert planned[name].needs == teacher.produces
        assert [os.path.basename(s.folder) for s in planned[name].steps] == [f"seed_{name[-1]}", "test"]
    assert planned["baseline seed 1"].needs == ""
    # The shapes sweep's teacher is each seed's baseline.
    target = {t.name: t for _, _, t in ablate.tasks(ablate.parse_args(
        ["--seeds", "4", "--output-dir", str(tmp_path)]))}
    assert target["+loss (teacher) seed 4"].needs == target["baseline seed 4"].produces


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--jobs", "2", "--gpus", "0", "1"]])
def test_ablate_refuses_impossible_slots(argv, capsys):
    with pytest.raises(SystemExit):
        ablate.parse_args(argv)
    assert "--jobs" in capsys.readouterr().err
