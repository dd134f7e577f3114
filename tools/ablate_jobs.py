"""Ablation runs side by side: one task (a run: train, then score on the test set) per slot.

A slot is what its processes get on top of ``os.environ``: ``{"OMP_NUM_THREADS": "1"}`` for one
of several CPU processes, ``{"CUDA_VISIBLE_DEVICES": "2"}`` to give a run one GPU of a node. A
task runs its unfinished steps in order in one slot; a task whose teacher another task of the
same call trains (``needs`` is that task's ``produces``) starts after it has finished. With one
slot the children write to this terminal; with more, each step's output goes to
``<its folder>/ablate_output.log`` (train_net's own ``log.txt`` is there too).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

LOG_FILE = "ablate_output.log"


@dataclass
class Step:
    argv: list[str]  # the child process's command line
    folder: str  # where it leaves its result: the step is done when ``is_done(folder)``
    label: str = ""  # what is printed when it starts


@dataclass
class Task:
    name: str
    steps: list[Step]
    produces: str = ""  # a file this task writes that another task may need
    needs: str = ""  # a file another task of the call may write first


def _next_step(task: Task, is_done: Callable[[str], bool]) -> Step | None:
    return next((s for s in task.steps if not is_done(s.folder)), None)


def _start(step: Step, env: dict[str, str], cwd: str, own_log: bool) -> subprocess.Popen:
    print(f"{step.label or ' '.join(step.argv)}" + (f"  [{env}]" if env else ""), flush=True)
    if not own_log:
        return subprocess.Popen(step.argv, cwd=cwd, env={**os.environ, **env})
    os.makedirs(step.folder, exist_ok=True)
    with open(os.path.join(step.folder, LOG_FILE), "a") as out:
        return subprocess.Popen(step.argv, cwd=cwd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


def run_tasks(
    tasks: list[Task], slots: list[dict[str, str]], is_done: Callable[[str], bool], cwd: str,
    poll_s: float = 1.0,
) -> None:
    """Runs every unfinished step of ``tasks``, at most one task per slot at a time, in the
    tasks' order except where a task waits for the one that ``produces`` what it ``needs``.

    A step fails when it exits non-zero or without leaving its result; then no further task
    starts, the running ones finish, and a ``RuntimeError`` names each failed step (its exit
    status and log) and the tasks not started.
    """
    pending = [t for t in tasks if _next_step(t, is_done) is not None]
    running: dict[int, tuple[Task, Step, subprocess.Popen]] = {}
    failures: list[str] = []
    own_log = len(slots) > 1

    def waits(task: Task) -> bool:
        unfinished = pending + [t for t, _, _ in running.values()]
        return bool(task.needs) and any(t.produces == task.needs for t in unfinished if t is not task)

    while pending or running:
        for slot, env in enumerate(slots):
            if slot in running or failures:
                continue
            task = next((t for t in pending if not waits(t)), None)
            if task is None:
                break
            pending.remove(task)
            step = _next_step(task, is_done)
            running[slot] = (task, step, _start(step, env, cwd, own_log))
        if not running:
            break
        time.sleep(poll_s)
        for slot, (task, step, proc) in list(running.items()):
            status = proc.poll()
            if status is None:
                continue
            del running[slot]
            if status != 0 or not is_done(step.folder):
                log = os.path.join(step.folder, LOG_FILE) if own_log else "the output above"
                why = f"exit status {status}" if status else f"no result in {step.folder}"
                failures.append(f"{task.name}: {why} (see {log})")
                continue
            following = _next_step(task, is_done)
            if following is not None:
                running[slot] = (task, following, _start(following, slots[slot], cwd, own_log))
    if failures:
        not_started = [t.name for t in pending]
        raise RuntimeError("ablation runs failed:\n  " + "\n  ".join(failures)
                           + (f"\nnot started: {', '.join(not_started)}" if not_started else ""))
