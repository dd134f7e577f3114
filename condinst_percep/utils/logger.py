"""Logging set-up shared by training, evaluation and the tools.

The main process logs to the console and to ``OUTPUT_DIR/log.txt``; other ranks only write
``log.txt.rank{N}`` so that a multi-process run keeps one readable console.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
_DATE_FORMAT = "%m/%d %H:%M:%S"


def setup_logger(
    output: str | None = None, distributed_rank: int = 0, name: str = "condinst_percep"
) -> logging.Logger:
    """Configures and returns the logger ``name``, replacing handlers set by earlier calls.

    Args:
        output: a directory (the log goes to ``output/log.txt``) or a file path ending in
            ``.txt``/``.log``; ``None`` logs to the console only.
        distributed_rank: ranks other than 0 log to ``<file>.rank{N}`` and not to the console.
        name: the logger to configure; its children inherit the handlers.
    """
    logger = logging.getLogger(name)
    # Calling again (a second run in the same process) replaces the handlers instead of
    # doubling every line or keeping writing into the previous run's log file.
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT)

    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        logger.addHandler(console)

    if output is not None:
        if output.endswith(".txt") or output.endswith(".log"):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        file_handler = logging.FileHandler(filename, mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
