#!/usr/bin/env python
"""Lists where one training iteration makes the host wait for the device.

Runs one iteration of ``train_net.py``'s trainer on one batch of the config's training set, at
the config's device, under :class:`condinst_percep.utils.host_sync.HostSyncAudit`, and prints
the synchronisation points (see that module for what is counted)::

    python tools/host_sync.py --config-file CONFIG [KEY VALUE ...]

On a GPU, ``--cuda-sync-debug`` also runs a second iteration (a fresh trainer, the loader's
first batch) under ``torch.cuda.set_sync_debug_mode("warn")`` and lists the lines of the package
where torch itself reported a synchronising CUDA call, then the sites found by one list and not
the other: the audit's CPU-side list checked against the GPU's own account.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import warnings

import torch

import condinst_percep
from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_train_loader
from condinst_percep.engine import Trainer
from condinst_percep.utils.events import EventStorage
from condinst_percep.utils.host_sync import HOST_SIDE_BY_DESIGN, HostSyncAudit, innermost_site


def _trainer_on_one_batch(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.data_loader = [next(iter(build_detection_train_loader(cfg)))]
    return trainer


def audit_training_step(cfg) -> HostSyncAudit:
    """Audits one ``Trainer.run_step`` (forward, backward, checks, optimizer step) of the model
    ``cfg`` describes, on the first batch of its training loader fetched beforehand, with
    :data:`HOST_SIDE_BY_DESIGN` allowed. ``cfg.OUTPUT_DIR`` receives the trainer's writers'
    files; ``MODEL.WEIGHTS`` is not loaded (the weights do not change where the host waits)."""
    trainer = _trainer_on_one_batch(cfg)
    with EventStorage(0), HostSyncAudit(allow=HOST_SIDE_BY_DESIGN) as audit:
        trainer.run_step()
    return audit


def cuda_sync_sites(cfg) -> collections.Counter[str]:
    """``{"path:line (function)": count}``: the innermost line of the package under each
    synchronising call torch's sync-debug mode reports in one ``Trainer.run_step`` on CUDA
    (``"<outside>"`` where none of the package is on the stack). Needs ``MODEL.DEVICE`` cuda."""
    package = os.path.dirname(os.path.abspath(condinst_percep.__file__))
    sites: collections.Counter[str] = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        site = innermost_site(sys._getframe(1), (package,))
        sites["<outside>" if site is None else "{}:{} ({})".format(*site)] += 1

    trainer = _trainer_on_one_batch(cfg)
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown, warnings.showwarning = warnings.showwarning, record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with EventStorage(0):
                trainer.run_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def _site(key: str) -> str:
    """An audit key ``"op at path:line (function)"`` as ``"path:line (function)"``."""
    return key.split(" at ", 1)[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python tools/host_sync.py",
        description="Lists where one training iteration makes the host wait for the device.",
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--cuda-sync-debug", action="store_true",
                        help="also list where torch's CUDA sync-debug mode reports a sync")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.cuda_sync_debug and not (str(cfg.MODEL.DEVICE).startswith("cuda")
                                     and torch.cuda.is_available()):
        parser.error(f"--cuda-sync-debug needs MODEL.DEVICE cuda on a machine with CUDA "
                     f"(MODEL.DEVICE is {cfg.MODEL.DEVICE!r}, CUDA available: "
                     f"{torch.cuda.is_available()}): torch's sync-debug mode reports CUDA "
                     "synchronisations only")
    with tempfile.TemporaryDirectory() as output_dir:
        cfg.OUTPUT_DIR = output_dir
        audit = audit_training_step(cfg)
        print(audit.report())
        print(f"total {audit.total} (allowed {sum(audit.allowed.values())})")
        if args.cuda_sync_debug:
            sites = cuda_sync_sites(cfg)
            print("torch's CUDA sync-debug mode:")
            print("\n".join(f"{n:5d}  {k}" for k, n in sites.most_common()) or "(none)")
            audited = {_site(k) for k in audit.points}
            print("reported by torch, not by the audit:", sorted(set(sites) - audited) or "none")
            print("listed by the audit, not by torch:", sorted(audited - set(sites)) or "none")


if __name__ == "__main__":
    main()
