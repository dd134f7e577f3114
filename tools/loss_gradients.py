#!/usr/bin/env python
"""How much of the training signal each loss gives: the norm of every loss term's gradient on
the model's parameters, per module, on a few training batches of a model (a checkpoint, or the
config's initial weights), with its ratio and cosine to a reference term's gradient.

    python tools/loss_gradients.py --config-file configs/Facade/CondInst-Percep_facade.yaml \\
        --batches 4 MODEL.WEIGHTS output/ablate_facade/loss__gt/seed_0/model_final.pth

A loss whose gradient is a small fraction of the others', and not opposed to them, moves the
weights little whatever its value: that is the question "why does +loss change nothing" asks.
The model is in training mode (batch norm uses batch statistics, as in training); nothing is
stepped or saved.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
from tabulate import tabulate

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_train_loader
from condinst_percep.engine import seed_all_rng
from condinst_percep.modeling import build_model

ALL = "all"


def parameter_groups(model: torch.nn.Module) -> dict[str, list[int]]:
    """Indices into ``trainable(model)`` per top-level module that has any (CondInst:
    ``backbone``, ``proposal_generator``, ``mask_branch``, ``controller``) and ``all``."""
    groups: dict[str, list[int]] = {ALL: []}
    for i, (name, _) in enumerate(trainable(model)):
        groups[ALL].append(i)
        groups.setdefault(name.split(".", 1)[0], []).append(i)
    return groups


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def batch_gradients(
    model: torch.nn.Module, batch: list[dict]
) -> dict[str, list[torch.Tensor | None]]:
    """Per loss term of ``model(batch)``, its gradient on each trainable parameter (None where
    the term does not reach the parameter), from one forward pass."""
    losses = model(batch)
    params = [p for _, p in trainable(model)]
    names = sorted(losses)
    grads = {}
    for k, name in enumerate(names):
        grads[name] = list(torch.autograd.grad(
            losses[name], params, retain_graph=k < len(names) - 1, allow_unused=True))
    return grads


def _flat(grads: list[torch.Tensor | None], params: list[torch.Tensor], idx: list[int]):
    return torch.cat([
        (grads[i] if grads[i] is not None else torch.zeros_like(params[i])).double().flatten()
        for i in idx
    ])


def summarize(
    model: torch.nn.Module, per_batch: list[dict[str, list[torch.Tensor | None]]], reference: str
) -> list[dict]:
    """Rows ``{group, loss, norm, ratio, cosine}``: the median over batches of the gradient norm
    of ``loss`` on ``group``'s parameters, of its ratio to ``reference``'s norm there, and of the
    cosine between the two (NaN where either is zero)."""
    params = [p for _, p in trainable(model)]
    losses = sorted(per_batch[0])
    rows = []
    for group, idx in parameter_groups(model).items():
        stats = {loss: ([], [], []) for loss in losses}
        for grads in per_batch:
            r = _flat(grads[reference], params, idx)
            r_norm = r.norm().item()
            for loss in losses:
                g = _flat(grads[loss], params, idx)
                g_norm = g.norm().item()
                norms, ratios, cosines = stats[loss]
                norms.append(g_norm)
                ratios.append(g_norm / r_norm if r_norm > 0 else math.nan)
                cosines.append((g @ r).item() / (g_norm * r_norm) if g_norm * r_norm > 0 else math.nan)
        rows += [dict(group=group, loss=loss, norm=statistics.median(norms),
                      ratio=statistics.median(ratios), cosine=statistics.median(cosines))
                 for loss, (norms, ratios, cosines) in stats.items()]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--batches", type=int, default=4, help="training batches to measure on")
    parser.add_argument("--reference", default="loss_mask",
                        help="the loss term the others are compared with")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches {args.batches}: measure on at least one batch")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    # The initial weights (without MODEL.WEIGHTS) are the SEED's, as in training.
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    model.train()
    batches = iter(build_detection_train_loader(cfg))
    per_batch = [batch_gradients(model, next(batches))]
    # Checked on the first batch: the terms are known only once the model has run.
    if args.reference not in per_batch[0]:
        raise ValueError(f"--reference {args.reference!r} is not one of the model's losses "
                         f"{sorted(per_batch[0])}")
    per_batch += [batch_gradients(model, next(batches)) for _ in range(args.batches - 1)]
    rows = summarize(model, per_batch, args.reference)
    print(f"{args.batches} batches of {cfg.SOLVER.IMS_PER_BATCH} images; medians over batches; "
          f"ratio and cosine against {args.reference}'s gradient on the same parameters")
    print(tabulate([[r["group"], r["loss"], f"{r['norm']:.3g}", f"{r['ratio']:.3g}",
                     "–" if math.isnan(r["cosine"]) else f"{r['cosine']:+.2f}"] for r in rows],
                   headers=["parameters", "loss", "‖∇‖", "ratio", "cosine"], tablefmt="pipe"))
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
