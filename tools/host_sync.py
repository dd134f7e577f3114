#!/usr/bin/env python
"""Lists where one training iteration makes the host wait for the device.

Runs one iteration of ``train_net.py``'s trainer on one batch of the config's training set, at
the config's device, under :class:`condinst_percep.utils.host_sync.HostSyncAudit`, and prints
the synchronisation points (see that module for what is counted)::

    python tools/host_sync.py --config-file CONFIG [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import tempfile

from condinst_percep.config import get_cfg
from condinst_percep.data import build_detection_train_loader
from condinst_percep.engine import Trainer
from condinst_percep.utils.events import EventStorage
from condinst_percep.utils.host_sync import HOST_SIDE_BY_DESIGN, HostSyncAudit


def audit_training_step(cfg) -> HostSyncAudit:
    """Audits one ``Trainer.run_step`` (forward, backward, checks, optimizer step) of the model
    ``cfg`` describes, on the first batch of its training loader fetched beforehand, with
    :data:`HOST_SIDE_BY_DESIGN` allowed. ``cfg.OUTPUT_DIR`` receives the trainer's writers'
    files; ``MODEL.WEIGHTS`` is not loaded (the weights do not change where the host waits)."""
    trainer = Trainer(cfg)
    trainer.data_loader = [next(iter(build_detection_train_loader(cfg)))]
    with EventStorage(0), HostSyncAudit(allow=HOST_SIDE_BY_DESIGN) as audit:
        trainer.run_step()
    return audit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python tools/host_sync.py",
        description="Lists where one training iteration makes the host wait for the device.",
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    with tempfile.TemporaryDirectory() as output_dir:
        cfg.OUTPUT_DIR = output_dir
        audit = audit_training_step(cfg)
    print(audit.report())
    print(f"total {audit.total} (allowed {sum(audit.allowed.values())})")


if __name__ == "__main__":
    main()
