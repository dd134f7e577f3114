"""The perceptual CondInst under DistributedDataParallel (2 gloo processes on the CPU)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from condinst_percep.engine.launch import destroy_process_group
from tests.percep_helpers import make_batch, tiny_percep_cfg, write_teacher


def _two_steps(rank, config_file, weights):
    """(rank, loss_percep of both steps, whether the replicas are identical afterwards), and the
    last collective's tensors, which the caller keeps until the group is destroyed: a gloo worker
    thread that drops the last reference to them during interpreter shutdown needs the GIL and
    aborts the process (see ``destroy_process_group``)."""
    from torch.nn.parallel import DistributedDataParallel

    from condinst_percep.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_percep_cfg("teacher", config_file, weights)).train()
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    percep = []
    for step in range(2):
        # Rank 1's second batch has no objects: loss_percep must still reach every
        # parameter through the graph, or DDP's reducer fails on the next step.
        batch = make_batch(with_instances=True, seed=step + 10 * rank)
        if rank == 1 and step == 1:
            for record in batch:
                inst = record["instances"]
                record["instances"] = inst[torch.zeros(len(inst), dtype=torch.bool)]
        losses = ddp(batch)
        percep.append(float(losses["loss_percep"].detach()))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    return (rank, percep, bool(torch.equal(gathered[0], gathered[1]))), (flat, gathered)


def _worker(rank, init_file, config_file, weights, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    keep = None
    try:
        result, keep = _two_steps(rank, config_file, weights)
        results.put(result)
    finally:
        destroy_process_group()
    del keep


@pytest.mark.slow
def test_ddp_two_processes_no_unused_parameters_and_identical_replicas(tmp_path):
    config_file, weights = write_teacher(tmp_path)
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(str(tmp_path / "init"), config_file, weights, results), nprocs=2)
    out = sorted(results.get() for _ in range(2))
    (_, percep0, same0), (_, percep1, same1) = out
    assert same0 and same1
    assert all(v > 0 for v in percep0) and percep1[0] > 0 and percep1[1] == 0.0
