"""launch(): torchrun's environment, argument errors, and the command line."""

import os
import subprocess
import sys
import textwrap

import pytest

from condinst_percep.engine import default_argument_parser, launch
from tests.conftest import REPO


SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from condinst_percep.engine import launch
    from condinst_percep.utils import comm

    def main(out_dir):
        value = torch.tensor([float(comm.get_rank() + 1)])
        dist.all_reduce(value)
        with open(f"{out_dir}/rank{comm.get_rank()}.txt", "w") as f:
            f.write(f"{comm.get_world_size()} {comm.get_local_rank()} {dist.get_backend()} {value.item()}")
        return comm.get_rank()

    if __name__ == "__main__":
        result = launch(main, int(sys.argv[2]), args=(sys.argv[1],))
        # one write: under PYTHONUNBUFFERED print() writes the text and the newline apart
        sys.stdout.write(f"RESULT {result}\\n")
    """
)


def _read_ranks(tmp_path):
    return sorted((p.name, p.read_text()) for p in tmp_path.glob("rank*.txt"))


@pytest.mark.slow
def test_launch_under_torchrun_initialises_from_environment(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(tmp_path), "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one process per torchrun worker, each calling main once: no extra spawn
    assert _read_ranks(tmp_path) == [("rank0.txt", "2 0 gloo 3.0"), ("rank1.txt", "2 1 gloo 3.0")]
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("RESULT")) == [
        "RESULT 0", "RESULT 1"]


def test_launch_refuses_num_gpus_that_contradicts_torchrun(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="--num-gpus 4 under torchrun.*2 process"):
        launch(lambda: None, 4)


def test_launch_argument_errors_and_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert launch(lambda x: x * 2, 1, args=(21,)) == 42
    with pytest.raises(ValueError, match="--machine-rank 2 is not in"):
        launch(lambda: None, 1, num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="--dist-url auto only works on one machine"):
        launch(lambda: None, 2, num_machines=2, machine_rank=0, dist_url="auto")
    with pytest.raises(ValueError, match=r"--num-gpus \(0\)"):
        launch(lambda: None, 0)


def test_argument_parser_has_detectron2_flags():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--resume", "--num-gpus", "4", "--num-machines", "2",
         "--machine-rank", "1", "--dist-url", "tcp://h:1", "SOLVER.BASE_LR", "0.1"]
    )
    assert (args.config_file, args.resume, args.eval_only, args.num_gpus) == ("a.yaml", True, False, 4)
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 1, "tcp://h:1")
    assert args.opts == ["SOLVER.BASE_LR", "0.1"]
    assert "gloo" in default_argument_parser().format_help()
