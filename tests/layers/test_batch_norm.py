"""FrozenBatchNorm2d (closed form, old checkpoints, conversion), get_norm, NaiveSyncBatchNorm
(one process, and two gloo processes against BatchNorm2d on the whole batch) and the guard that
names a training batch norm fed one value per channel."""
import pytest
import torch
from torch import nn

from condinst_percep.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, get_norm, guard_batch_statistics
from tests.conftest import randomise_norms


def test_frozen_bn_closed_form_and_grad_path():
    bn = FrozenBatchNorm2d(3)
    randomise_norms(bn)
    x = torch.randn(2, 3, 4, 5)
    mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    w, b = bn.weight[:, None, None], bn.bias[:, None, None]
    expected = (x - mean) / torch.sqrt(var + 1e-5) * w + b
    torch.testing.assert_close(bn(x), expected)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(bn(xg), expected)
    bn(xg).sum().backward()
    slope = bn.weight / torch.sqrt(bn.running_var + 1e-5)
    torch.testing.assert_close(xg.grad, slope[None, :, None, None].expand_as(x))
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert bn(torch.zeros(0, 3, 4, 5)).shape == (0, 3, 4, 5)
    assert FrozenBatchNorm2d(3)(x).allclose(x, atol=1e-6)


def test_frozen_bn_loads_old_versions_and_bn_checkpoints():
    bn = FrozenBatchNorm2d(2)
    # Version 1: no running statistics stored -> identity statistics.
    sd = {"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, -1.0])}
    sd_meta = type("SD", (dict,), {})(sd)
    sd_meta._metadata = {"": {"version": 1}}
    bn.load_state_dict(sd_meta)
    torch.testing.assert_close(bn.running_var, torch.ones(2) - 1e-5)
    torch.testing.assert_close(bn.running_mean, torch.zeros(2))
    # Version 2 stored running_var without eps.
    stats = {"running_mean": torch.zeros(2), "running_var": torch.full((2,), 4.0)}
    sd2 = type("SD", (dict,), {})({**sd, **stats})
    sd2._metadata = {"": {"version": 2}}
    bn.load_state_dict(sd2)
    torch.testing.assert_close(bn.running_var, torch.full((2,), 4.0 - 1e-5))
    # A BatchNorm2d state_dict (with num_batches_tracked) loads strictly.
    ref = nn.BatchNorm2d(2)
    randomise_norms(ref)
    bn.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(bn(x), ref.eval()(x))


def test_convert_frozen_batchnorm_keeps_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert isinstance(model[1], FrozenBatchNorm2d)
    torch.testing.assert_close(model(x), before)


def test_get_norm():
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert type(get_norm("BN", 8)) is nn.BatchNorm2d
    assert type(get_norm("SyncBN", 8)) is NaiveSyncBatchNorm
    assert type(get_norm("nnSyncBN", 8)) is nn.SyncBatchNorm
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    with pytest.raises(ValueError, match="GN"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="'LN'"):
        get_norm("LN", 8)


def test_naive_sync_bn_single_process_is_batchnorm():
    torch.manual_seed(0)
    sync, plain = NaiveSyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_guard_batch_statistics_names_layer_and_key_only_where_torch_would_fail():
    model = nn.Sequential()
    model.add_module("a", nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)))
    model.add_module("b", nn.Sequential(NaiveSyncBatchNorm(3), FrozenBatchNorm2d(3)))
    guard_batch_statistics(model, {"a.": "MODEL.A.NORM"})
    lone = torch.randn(1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"^a\.1: its batch norm \(chosen by MODEL.A.NORM\) cannot "
                       r"compute statistics in training from one value per channel \(input \(1, 3, 1, 1\)\)"):
        model(lone)
    model.a.eval()  # running statistics; the next training BN has no key in the map
    with pytest.raises(ValueError, match=r"^b\.0: its batch norm cannot compute"):
        model(lone)
    assert model(torch.randn(2, 2, 1, 1)).shape == (2, 3, 1, 1)  # two values: torch's BN works
    assert model(torch.randn(1, 2, 1, 2)).shape == (1, 3, 1, 2)
    model.eval()
    assert model(lone).shape == (1, 3, 1, 1)
    assert not model.b[1]._forward_pre_hooks  # FrozenBN has no batch statistics


def _sync_bn_worker(rank: int, init_file: str, x: torch.Tensor, w: torch.Tensor, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        bn = NaiveSyncBatchNorm(3)
        local = x[rank * 2 : rank * 2 + 2].clone().requires_grad_()
        out = bn(local)
        (out * w[rank * 2 : rank * 2 + 2]).sum().backward()
        results[rank] = (out.detach(), local.grad, bn.running_mean.clone(), bn.running_var.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_naive_sync_bn_two_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    x, w = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_sync_bn_worker, args=(str(tmp_path / "init"), x, w, results), nprocs=2)
        results = dict(results)
    bn = nn.BatchNorm2d(3)
    xr = x.clone().requires_grad_()
    out = bn(xr)
    (out * w).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), out.detach(), **tol)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), xr.grad, **tol)
    torch.testing.assert_close(results[0][2], bn.running_mean)
    # detectron2 keeps the biased batch variance in running_var; torch's BN the unbiased one.
    biased_var = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(results[1][3], 0.9 + 0.1 * biased_var, **tol)
