"""Optimizer parameter groups, gradient clipping and lr schedules against detectron2's rules and
closed forms."""

import logging
import math

import pytest
import torch
from torch import nn

from condinst_percep.config import get_cfg
from condinst_percep.engine import validate_cfg
from condinst_percep.engine.solver import (
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
)
from condinst_percep.layers.batch_norm import FrozenBatchNorm2d


class _Net(nn.Module):
    """Every kind of parameter the rules distinguish: conv weight/bias, BN, GN, LayerNorm,
    a frozen conv, FrozenBN (buffers only) and a linear layer shared by two attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.frozen = nn.Conv2d(4, 4, 1)
        self.frozen.requires_grad_(False)
        self.fbn = FrozenBatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.fc_alias = self.fc


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _hyper_by_name(model, optimizer):
    by_id = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in by_id, "a parameter appears in two groups"
            by_id[id(p)] = (group["lr"], group["weight_decay"])
    return {name: by_id.get(id(p)) for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "wd_norm, bias_factor, wd_bias",
    [(0.0, 1.0, None), (0.0, 2.0, 0.0), (1e-5, 3.0, 5e-5)],
)
def test_param_groups_follow_detectron2_rules(wd_norm, bias_factor, wd_bias):
    model = _Net()
    cfg = _cfg(WEIGHT_DECAY_NORM=wd_norm, BIAS_LR_FACTOR=bias_factor, WEIGHT_DECAY_BIAS=wd_bias)
    opt = build_optimizer(cfg, model)
    got = _hyper_by_name(model, opt)

    base, wd = 0.1, 1e-4
    bias_lr = base * bias_factor
    # WEIGHT_DECAY_BIAS, when set, overrides the norm rule for norm biases too (it is applied
    # last); when None a bias keeps the decay of its module kind.
    bias_wd = wd if wd_bias is None else wd_bias
    norm_bias_wd = wd_norm if wd_bias is None else wd_bias
    expected = {
        "conv.weight": (base, wd),
        "conv.bias": (bias_lr, bias_wd),
        "bn.weight": (base, wd_norm),
        "bn.bias": (bias_lr, norm_bias_wd),
        "gn.weight": (base, wd_norm),
        "gn.bias": (bias_lr, norm_bias_wd),
        "ln.weight": (base, wd_norm),
        "ln.bias": (bias_lr, norm_bias_wd),
        "fc.weight": (base, wd),
        "fc.bias": (bias_lr, bias_wd),
        "frozen.weight": None,
        "frozen.bias": None,
    }
    assert got.keys() == expected.keys()  # named_parameters dedupes fc_alias; FrozenBN has none
    for name, exp in expected.items():
        if exp is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(exp), name
    n_in_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_in_opt == 10
    # equal hyper-parameters share one group
    assert len(opt.param_groups) == len({v for v in expected.values() if v is not None})
    assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in opt.param_groups)


def test_optimizer_refuses_bad_values_and_all_frozen():
    with pytest.raises(ValueError, match="SOLVER.BASE_LR = -0.1"):
        build_optimizer(_cfg(BASE_LR=-0.1), _Net())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(_cfg(), frozen)


def test_sgd_step_matches_manual_update_with_decay_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    cfg = _cfg(MOMENTUM=0.0, WEIGHT_DECAY_NORM=0.0, BIAS_LR_FACTOR=2.0)
    opt = build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 3)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    rules = {"0.weight": (0.1, 1e-4), "0.bias": (0.2, 1e-4), "1.weight": (0.1, 0.0), "1.bias": (0.2, 0.0)}
    for n, p in model.named_parameters():
        lr, wd = rules[n]
        assert torch.allclose(p, before[n] - lr * (grads[n] + wd * before[n]), atol=1e-7), n


def _grads(values):
    params = [nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(params, values):
        p.grad = torch.tensor(v, dtype=torch.float32)
    return params


def test_gradient_clipping_value_norm_and_full_model():
    values = [[3.0, -4.0], [0.3, 0.4], [-10.0, 0.0]]

    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0

    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    params = _grads(values)
    build_gradient_clipper(cfg)(params)
    for p, e in zip(params, [[1.0, -1.0], [0.3, 0.4], [-1.0, 0.0]]):
        assert p.grad.tolist() == pytest.approx(e)

    # "norm": each parameter separately rescaled to norm <= 1 (norms 5, 0.5, 10)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    params = _grads(values)
    build_gradient_clipper(cfg)(params)
    expected = [[0.6, -0.8], [0.3, 0.4], [-1.0, 0.0]]
    for p, e in zip(params, expected):
        assert p.grad.tolist() == pytest.approx(e, abs=1e-5)

    # "full_model": joint norm sqrt(25 + 0.25 + 100) rescaled to 1
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    validate_cfg(cfg)  # train_net accepts it too
    params = _grads(values)
    build_gradient_clipper(cfg)(params)
    total = math.sqrt(125.25)
    for p, v in zip(params, values):
        assert p.grad.tolist() == pytest.approx([x / total for x in v], abs=1e-5)

    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "elementwise"
    with pytest.raises(ValueError, match="CLIP_TYPE = 'elementwise'"):
        build_gradient_clipper(cfg)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    assert build_gradient_clipper(cfg) is None


def _lrs(cfg, n):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt, sched


def test_warmup_multistep_matches_closed_form(caplog):
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupMultiStepLR", MAX_ITER=100, STEPS=(30, 70, 500), GAMMA=0.1,
        WARMUP_ITERS=10, WARMUP_FACTOR=0.001, WARMUP_METHOD="linear",
    )
    with caplog.at_level(logging.WARNING, logger="condinst_percep.engine.solver"):
        lrs, _, _ = _lrs(cfg, 100)
    assert "SOLVER.STEPS (30, 70, 500) has values at or beyond SOLVER.MAX_ITER 100" in caplog.text

    def closed(t):  # detectron2's original WarmupMultiStepLR formula; 500 > MAX_ITER is ignored
        warm = 0.001 * (1 - t / 10) + t / 10 if t < 10 else 1.0
        return 0.1 * warm * 0.1 ** sum(t >= s for s in (30, 70))

    for t in (0, 1, 5, 9, 10, 29, 30, 31, 69, 70, 99):
        assert lrs[t] == pytest.approx(closed(t), rel=1e-9), t


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_warmup_cosine_matches_closed_form(method):
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=200, BASE_LR_END=0.01,
        WARMUP_ITERS=20, WARMUP_FACTOR=0.1, WARMUP_METHOD=method,
    )
    lrs, _, _ = _lrs(cfg, 200)
    end = 0.01 / 0.1

    def cosine(t):
        return end + 0.5 * (1 - end) * (1 + math.cos(math.pi * t / 200))

    def closed(t):
        if t >= 20:
            return 0.1 * cosine(t)
        if method == "constant":
            return 0.1 * 0.1
        return 0.1 * (0.1 + (cosine(20) - 0.1) * t / 20)

    for t in (0, 7, 19, 20, 21, 100, 150, 199):
        assert lrs[t] == pytest.approx(closed(t), rel=1e-9), t


def test_optimizer_and_scheduler_state_restore_the_curve():
    """What a checkpoint holds after iteration 22 (optimizer + scheduler) continues at 23."""
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=50, WARMUP_ITERS=5)
    full, _, _ = _lrs(cfg, 50)
    _, opt, sched = _lrs(cfg, 23)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    new_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    resumed = build_lr_scheduler(cfg, new_opt)
    new_opt.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    got = []
    for _ in range(23, 50):
        got.append(new_opt.param_groups[0]["lr"])
        resumed.step()
    assert got == pytest.approx(full[23:], rel=1e-12)


def test_schedule_config_errors_name_the_key():
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME = 'Poly'"):
        _lrs(_cfg(LR_SCHEDULER_NAME="Poly"), 1)
    with pytest.raises(ValueError, match="BASE_LR_END"):
        _lrs(_cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR_END=1.0), 1)
    with pytest.raises(ValueError, match="WARMUP_METHOD = 'exp'"):
        _lrs(_cfg(WARMUP_METHOD="exp"), 1)
    with pytest.raises(ValueError, match="STEPS"):
        _lrs(_cfg(MAX_ITER=100, STEPS=(50, 20)), 1)
