"""create_ddp_model in 2 gloo processes started by launch: per-process buffers, shared
parameters, no warning."""
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from condinst_percep.engine import create_ddp_model, launch
from condinst_percep.utils import comm


def _wrap_and_step(results):
    torch.manual_seed(comm.get_rank())  # different initial weights: DDP must start from rank 0's
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = create_ddp_model(model)
    ddp(torch.arange(18.0).view(2, 1, 3, 3) * (comm.get_rank() + 1))
    same = []
    for tensor in (model[0].weight.detach(), model[1].running_mean):
        gathered = [torch.zeros_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor)
        same.append(torch.equal(*gathered))
    results.put((comm.get_rank(), [f"{w.category.__name__}: {w.message}" for w in caught], *same))


@pytest.mark.slow
def test_ddp_keeps_buffers_per_process_and_warns_nothing():
    results = mp.get_context("spawn").SimpleQueue()
    launch(_wrap_and_step, 2, dist_url="auto", args=(results,))
    for _ in range(2):
        rank, caught, same_weights, same_running_mean = results.get()
        assert caught == [], (rank, caught)  # torch's FutureWarning on broadcast_buffers
        assert same_weights  # parameters broadcast from rank 0 at wrapping
        assert not same_running_mean  # BN statistics stay each process's (AdelaiDet's DDP)
