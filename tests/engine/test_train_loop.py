"""The training loop, its hooks and writers on a small regression problem (no CondInst needed)."""

import itertools
import json
import logging
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.engine.defaults import iteration_seed
from condinst_percep.engine.hooks import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from condinst_percep.engine.launch import destroy_process_group
from condinst_percep.engine.train_loop import SimpleTrainer
from condinst_percep.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
)


class _Regressor(nn.Module):
    """Returns two named losses; ``bad_at`` makes ``loss_b`` NaN at that call (0-based)."""

    def __init__(self, bad_at: int = -1) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.bad_at = bad_at
        self.calls = 0
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        out = self.linear(x)
        self.seen_dtypes.append(out.dtype)
        loss_b = (out.float() - y).abs().mean()
        if self.calls == self.bad_at:
            loss_b = loss_b * float("nan")
        self.calls += 1
        return {"loss_a": ((out.float() - y) ** 2).mean(), "loss_b": loss_b}


def _loader(n_batches=1000):
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    for _ in range(n_batches):
        xs = torch.randn(8, 4, generator=g)
        yield [{"x": x, "y": (x @ w).unsqueeze(0)} for x in xs]


def test_non_finite_loss_names_term_and_iteration_and_leaves_weights():
    model = _Regressor(bad_at=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, _loader(), opt)
    with pytest.raises(FloatingPointError, match=r"iteration 5: loss_b = nan") as info:
        trainer.train(0, 10)
    assert "loss_a" in str(info.value)  # all terms are listed for context
    assert trainer.completed is False
    # the step with the NaN was not applied
    assert torch.isfinite(model.linear.weight).all()


def test_fp16_refused_on_cpu_and_bf16_autocasts():
    model = _Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="float16.*CUDA.*bfloat16"):
        SimpleTrainer(model, _loader(), opt, amp_dtype=torch.float16)
    trainer = SimpleTrainer(model, _loader(), opt, amp_dtype=torch.bfloat16)
    trainer.train(0, 3)
    assert model.seen_dtypes == [torch.bfloat16] * 3
    assert model.linear.weight.dtype == torch.float32  # master weights stay fp32


def test_training_decreases_loss_and_clipper_sees_gradients():
    model = _Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    trainer = SimpleTrainer(
        model, _loader(), opt, grad_clipper=lambda ps: seen.append(len(list(ps)))
    )
    trainer.train(0, 60)
    assert seen == [2] * 60  # weight and bias, every step
    assert trainer.storage.history("loss_a").values()[-1][0] < 0.1 * trainer.storage.history("loss_a").values()[0][0]


def test_hooks_write_metrics_json_console_and_tensorboard(tmp_path):
    model = _Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (1 + it))
    evals = []

    def fake_eval():
        evals.append(trainer.iter)
        return {"bbox": {"AP": 50.0 + len(evals), "AP50": 70.0}, "segm": {"AP": 40.0}}

    max_iter = 45
    writers = [
        CommonMetricPrinter(max_iter),
        JSONWriter(str(tmp_path / "metrics.json")),
        TensorboardXWriter(str(tmp_path)),
    ]
    trainer = SimpleTrainer(model, _loader(), opt)
    trainer.register_hooks(
        [IterationTimer(), LRScheduler(opt, sched), EvalHook(20, fake_eval), PeriodicWriter(writers, 20)]
    )
    # A handler on the printer's own logger: setup_logger() elsewhere may stop propagation.
    printer_logger = logging.getLogger("condinst_percep.utils.events")
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    printer_logger.addHandler(handler)
    level = printer_logger.level
    printer_logger.setLevel(logging.INFO)
    try:
        trainer.train(0, max_iter)
    finally:
        printer_logger.removeHandler(handler)
        printer_logger.setLevel(level)

    # periodic eval after iterations 19 and 39, final one after training (max_iter)
    assert evals == [19, 39, max_iter]
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [19, 39, 44, 45]
    for d in lines[:3]:
        for key in ("loss_a", "loss_b", "total_loss", "lr", "time", "data_time", "eta_seconds", "max_mem"):
            assert key in d, (key, d)
    # lr is the one used at that iteration (not smoothed); losses are medians of the window
    assert lines[0]["lr"] == pytest.approx(0.1 / 20)
    losses = trainer.storage.history("total_loss").values()
    window = sorted(v for v, it in losses if 20 <= it <= 39)
    assert lines[1]["total_loss"] == pytest.approx((window[9] + window[10]) / 2, rel=1e-6)
    assert lines[0]["bbox/AP"] == 51.0 and lines[1]["bbox/AP"] == 52.0
    assert lines[3] == {"iteration": 45, "bbox/AP": 53.0, "bbox/AP50": 70.0, "segm/AP": 40.0}

    console = [r.getMessage() for r in records if r.getMessage().startswith("eta:")]
    assert len(console) == 3
    assert "iter: 19" in console[0] and "total_loss:" in console[0] and "max_mem:" in console[0]
    assert "lr: " in console[0] and "data_time:" in console[0]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_writers_flush_what_was_measured_when_training_fails(tmp_path):
    model = _Regressor(bad_at=25)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    evals = []
    trainer = SimpleTrainer(model, _loader(), opt)
    trainer.register_hooks(
        [IterationTimer(), EvalHook(0, lambda: evals.append(1) or {}),
         PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], 20)]
    )
    with pytest.raises(FloatingPointError):
        trainer.train(0, 40)
    assert evals == []  # no "final" evaluation after a failure
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [19, 24]


def test_storage_refuses_mixed_smoothing_hints():
    with EventStorage() as storage:
        storage.put_scalar("a", 1.0)
        with pytest.raises(ValueError, match="'a'"):
            storage.put_scalar("a", 2.0, smoothing_hint=False)


class _Drawing(_Regressor):
    """Records one draw from each global generator per call, as a model sampling at random."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[float, float, float]] = []

    def forward(self, batch):
        self.draws.append((torch.rand(()).item(), float(np.random.rand()), random.random()))
        return super().forward(batch)


def _draws(seed, start, stop):
    torch.manual_seed(start)  # a state unlike the uninterrupted run's at `start`
    np.random.seed(start)
    random.seed(start)
    model = _Drawing()
    SimpleTrainer(model, itertools.islice(_loader(), start, None),
                  torch.optim.SGD(model.parameters(), lr=0.01), seed=seed).train(start, stop)
    return model.draws


def test_seeded_iterations_draw_the_same_when_resumed():
    straight = _draws(5, 0, 6)
    assert _draws(5, 3, 6) == straight[3:]
    assert len({d[0] for d in straight}) == 6  # a fresh stream per iteration, not one replayed
    assert _draws(6, 0, 6) != straight
    # Each process of a run draws its own stream.
    assert len({iteration_seed(5, 3, rank) for rank in range(4)}) == 4
    # Unseeded, the draws depend on the generators' state when the run started.
    assert _draws(None, 3, 6) != _draws(None, 0, 6)[3:]


class _SignalAt(_Regressor):
    """Sends ``signum`` to this process during the forward of call ``at``."""

    def __init__(self, at: int, signum: int) -> None:
        super().__init__()
        self.at, self.signum = at, signum

    def forward(self, batch):
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(batch)


def _checkpointed_trainer(model, output_dir):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (1 + it))
    checkpointer = Checkpointer(model, str(output_dir), optimizer=opt, scheduler=sched)
    trainer = SimpleTrainer(model, _loader(), opt)
    trainer.register_hooks(
        [LRScheduler(opt, sched), PeriodicCheckpointer(checkpointer, period=100)]
    )
    return trainer, checkpointer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_finishes_the_iteration_checkpoints_and_exits(tmp_path, signum):
    torch.manual_seed(0)
    model = _SignalAt(at=5, signum=signum)
    trainer, _ = _checkpointed_trainer(model, tmp_path)
    handler_before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as info:
        trainer.train(0, 20)
    assert info.value.code == 128 + signum
    assert signal.getsignal(signum) is handler_before  # handlers restored
    assert trainer.interrupted and not trainer.completed
    # iteration 5 (whose forward got the signal) completed; 6 never started
    assert model.calls == 6
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    saved = torch.load(tmp_path / "model_0000005.pth", weights_only=False)
    assert saved["iteration"] == 5
    assert torch.equal(saved["model"]["linear.weight"], model.linear.weight.detach())

    # resuming from it reproduces the uninterrupted run
    torch.manual_seed(0)
    reference = _Regressor()
    ref_trainer, _ = _checkpointed_trainer(reference, tmp_path / "ref")
    ref_trainer.train(0, 12)

    resumed_model = _Regressor()  # its initial weights are overwritten by the checkpoint
    resumed, checkpointer = _checkpointed_trainer(resumed_model, tmp_path)
    start = checkpointer.resume_or_load("", resume=True)["iteration"] + 1
    resumed.data_loader = itertools.islice(_loader(), start, None)
    resumed.train(start, 12)
    assert torch.allclose(resumed_model.linear.weight, reference.linear.weight, atol=1e-7)


def _ddp_checks(rank):
    """(rank, stop, nan, finite, host sync points) of one process of the DDP test."""
    from torch.nn.parallel import DistributedDataParallel

    from condinst_percep.utils.host_sync import HostSyncAudit

    def train(model, iterations, stopped_by):
        """(trainer, the exception that stopped it or None)."""
        trainer = SimpleTrainer(DistributedDataParallel(model), _loader(),
                                torch.optim.SGD(model.parameters(), lr=0.01))
        try:
            trainer.train(0, iterations)
        except stopped_by as e:
            return trainer, e
        return trainer, None

    # A stop signal reaching rank 1 alone, during iteration 3's forward.
    torch.manual_seed(0)
    model = _SignalAt(at=3, signum=signal.SIGTERM) if rank == 1 else _Regressor()
    trainer, e = train(model, 20, SystemExit)
    stop = "completed" if e is None else (e.code, trainer.iter, model.calls)
    # A NaN loss on rank 0 alone, at iteration 2.
    torch.manual_seed(0)
    model = _Regressor(bad_at=2 if rank == 0 else -1)
    trainer, e = train(model, 5, FloatingPointError)
    nan = "completed" if e is None else str(e).split(":")[0]
    finite = bool(torch.isfinite(model.linear.weight).all())
    # The host reads of one DDP iteration.
    with EventStorage(0), HostSyncAudit() as audit:
        trainer.run_step()
    return rank, stop, nan, finite, dict(audit.points)


def _ddp_worker(rank, init_file, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results.put(_ddp_checks(rank))
    finally:
        destroy_process_group()


@pytest.mark.slow
def test_ddp_processes_agree_on_stop_and_non_finite_loss_through_the_one_read(tmp_path):
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    out = sorted(results.get() for _ in range(2))
    for rank, stop, nan, finite, points in out:
        # Rank 1's flag reached rank 0 in iteration 3's read: both finished iteration 3 and
        # stopped before 4, with the shell's code for SIGTERM.
        assert stop == (128 + signal.SIGTERM, 4, 4), (rank, stop)
        assert nan == "Loss became non-finite at iteration 2", (rank, nan)
        assert finite
        # One DDP iteration waits for the device once: the loop's read.
        assert len(points) == 1, points
        [(key, count)] = points.items()
        assert key.startswith("tolist at condinst_percep/engine/train_loop.py:"), key
        assert key.endswith(" (_reduce_and_check)") and count == 1, points
