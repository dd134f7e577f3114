"""Loading renamed weights into a model by exact name, with a report and a sanity check."""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from fvcore.common.config import CfgNode
from tabulate import tabulate
from torch import nn

logger = logging.getLogger(__name__)

# Checkpoint keys of optional AdelaiDet heads: loaded when the model has them, else reported
# and skipped (a '_sem' checkpoint fine-tuned or evaluated without its semantic head).
_SEM_HEAD = (
    "semantic-loss head of the '_sem' models, not in this model "
    "(MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON is off)"
)
_SKIPPED_PREFIXES = {"mask_branch.seg_head.": _SEM_HEAD, "mask_branch.logits.": _SEM_HEAD}


def _expected_missing(key: str) -> bool:
    """Model keys a compatible checkpoint may lack without consequence."""
    # _iter: BoxInst's warm-up counter, added to AdelaiDet after the CondInst model zoo.
    return key.endswith(".num_batches_tracked") or key == "mask_head._iter"


class CheckpointMismatchError(RuntimeError):
    """Too little of the model was found in a checkpoint."""


@dataclass
class LoadReport:
    """What a load did. ``mismatched`` maps key → (checkpoint shape, model shape)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    model_keys: list[str] = field(default_factory=list, repr=False)

    def table(self) -> str:
        """A table of every key that was not loaded, grouped by module, with the reason."""
        rows = [
            (k, f"shape mismatch: checkpoint {c} vs model {m}")
            for k, (c, m) in self.mismatched.items()
        ]
        missing = _collapse(self.missing, self.model_keys, self.expected_missing)
        rows += [(k, "missing from the checkpoint") for k in missing]
        rows += [(k, "missing (harmless: counter)") for k in _group(self.expected_missing)]
        rows += [(k, "unexpected: not in the model") for k in _group(self.unexpected)]
        rows += [(k, f"skipped: {why}") for k, why in _group_reasons(self.skipped).items()]
        head = f"Loaded {len(self.loaded)} tensors from '{self.source}'"
        if not rows:
            return head + "; every model key matched."
        return head + ":\n" + tabulate(rows, headers=["key(s)", "status"], tablefmt="pipe")


def _group(keys: list[str]) -> list[str]:
    """``a.b.weight``, ``a.b.bias`` → ``a.b.{bias,weight}``; keeps first-seen module order."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for key in keys:
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    return [
        f"{m}.{leaves[0]}" if len(leaves) == 1 else f"{m}.{{{','.join(sorted(leaves))}}}"
        for m, leaves in groups.items()
    ]


def _collapse(keys: list[str], model_keys: list[str], harmless: list[str]) -> list[str]:
    """Whole modules missing (e.g. every head when loading ImageNet weights) as ``prefix.*``;
    the rest grouped by :func:`_group`."""
    keyset, covered, rows, rest = set(keys) | set(harmless), set(), [], []
    for key in keys:
        if key in covered:
            continue
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i]) + "."
            under = [k for k in model_keys if k.startswith(prefix)]
            if len(under) > 1 and keyset.issuperset(under):
                rows.append(f"{prefix}* ({len(under)} keys)")
                covered.update(under)
                break
        else:
            rest.append(key)
    return rows + _group(rest)


def _group_reasons(skipped: dict[str, str]) -> dict[str, str]:
    by_reason: OrderedDict[str, list[str]] = OrderedDict()
    for key, why in skipped.items():
        by_reason.setdefault(why, []).append(key)
    return {g: why for why, keys in by_reason.items() for g in _group(keys)}


def load_model_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    dropped: dict[str, str] | None = None,
    min_loaded_fraction: float = 0.5,
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` by exact name; log and return a :class:`LoadReport`.

    Keys of unimplemented AdelaiDet heads and keys whose shape differs are skipped, never
    reshaped. Raises :class:`CheckpointMismatchError` if fewer than ``min_loaded_fraction`` of
    the parameter elements under ``backbone.`` (of the whole model if it has no backbone) were
    loaded: training from noise because of a wrong file or wrong names is never what was meant.
    """
    model_sd = model.state_dict()
    report = LoadReport(source=source, skipped=dict(dropped or {}), model_keys=list(model_sd))
    kept: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        reason = next((why for p, why in _SKIPPED_PREFIXES.items() if key.startswith(p)), None)
        if reason is not None and key not in model_sd:
            report.skipped[key] = reason
        elif key in model_sd and tuple(value.shape) != tuple(model_sd[key].shape):
            report.mismatched[key] = (tuple(value.shape), tuple(model_sd[key].shape))
        else:
            kept[key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        kept._metadata = metadata
    incompatible = model.load_state_dict(kept, strict=False)
    missing = [k for k in incompatible.missing_keys if k not in report.mismatched]
    report.missing = [k for k in missing if not _expected_missing(k)]
    report.expected_missing = [k for k in missing if _expected_missing(k)]
    report.unexpected = list(incompatible.unexpected_keys)
    not_loaded = set(incompatible.missing_keys) | set(report.mismatched)
    report.loaded = [k for k in model_sd if k not in not_loaded]

    text = report.table()
    if report.missing or report.unexpected or report.mismatched:
        logger.warning(text)
    else:
        logger.info(text)
    _check_enough_loaded(model, report, min_loaded_fraction)
    return report


def _check_enough_loaded(model: nn.Module, report: LoadReport, min_fraction: float) -> None:
    params = dict(model.named_parameters())
    scope = {k: p for k, p in params.items() if k.startswith("backbone.")} or params
    total = sum(p.numel() for p in scope.values())
    loaded = set(report.loaded)
    got = sum(p.numel() for k, p in scope.items() if k in loaded)
    if total and got < min_fraction * total:
        where = "backbone" if any(k.startswith("backbone.") for k in params) else "model"
        raise CheckpointMismatchError(
            f"only {got:,} of the {total:,} {where} parameters ({got / total:.1%}) were found in "
            f"'{report.source}' (at least {min_fraction:.0%} required): wrong file, or a file for "
            f"another architecture/depth?\n{report.table()}"
        )


# Pixel conventions each pretrained-backbone format was trained with.
_MSRA_MEAN, _MSRA_STD = [103.530, 116.280, 123.675], [1.0, 1.0, 1.0]
_TORCHVISION_MEAN, _TORCHVISION_STD = [123.675, 116.280, 103.530], [58.395, 57.120, 57.375]


def check_format_conventions(fmt: str, cfg: CfgNode, source: str) -> None:
    """Refuse a config whose input convention or stride placement does not fit the weights.

    * ``caffe2`` (MSRA ImageNet): BGR 0-255 input, mean [103.53, 116.28, 123.675], std 1,
      ``MODEL.RESNETS.STRIDE_IN_1X1: True``.
    * ``torchvision``: RGB input, mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]
      (torchvision's normalisation in 0-255 units), ``MODEL.RESNETS.STRIDE_IN_1X1: False``.

    detectron2 and AdelaiDet checkpoints carry no convention of their own and are not checked.
    """
    if fmt == "caffe2":
        expected = ("BGR", _MSRA_MEAN, _MSRA_STD, True)
    elif fmt == "torchvision":
        expected = ("RGB", _TORCHVISION_MEAN, _TORCHVISION_STD, False)
    else:
        return
    fmt_, mean, std, stride_in_1x1 = expected
    actual = (
        cfg.INPUT.FORMAT,
        list(cfg.MODEL.PIXEL_MEAN),
        list(cfg.MODEL.PIXEL_STD),
        cfg.MODEL.RESNETS.STRIDE_IN_1X1,
    )
    names = ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1")
    wrong = [
        f"{n} = {a!r} (needs {e!r})"
        for n, a, e in zip(names, actual, expected)
        if (a != e if not isinstance(e, list) else any(abs(x - y) > 1e-3 for x, y in zip(a, e)))
    ]
    if wrong:
        raise ValueError(
            f"'{source}' holds {fmt} ResNet weights, which the config does not fit: "
            + "; ".join(wrong)
        )
