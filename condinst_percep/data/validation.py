"""The bad-data policy: what happens to a defective record, and the count of what was done.

``DATALOADER.BAD_DATA_POLICY`` is ``"error"`` (stop with an error naming the file and the
record) or ``"skip"`` (leave the image out, count it, warn). Some defects have one obvious
repair and are fixed under both policies (see docs/reliability.md); those are counted too.
A :class:`BadDataReport` holds the policy and the counts; loading code reports to the one made
active by :func:`collect_bad_data`, so ``DatasetCatalog.get(name)`` needs no extra argument.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar

from tabulate import tabulate

POLICY_KEY = "DATALOADER.BAD_DATA_POLICY"
BAD_DATA_POLICIES = ("error", "skip")


class BadDataError(ValueError):
    """A defect of the data itself (not of the config or the code): the policy applies to it."""


class MissingImageError(BadDataError, FileNotFoundError):
    """An image file that does not exist."""


def check_policy(policy: str) -> str:
    if policy not in BAD_DATA_POLICIES:
        raise ValueError(f"{POLICY_KEY} must be one of {BAD_DATA_POLICIES}, got {policy!r}")
    return policy


class BadDataReport:
    """Applies a policy to defects and counts them per (action, reason).

    ``bad(reason, where)`` raises :class:`BadDataError` under ``"error"`` and counts a skip
    under ``"skip"``; ``fixed(reason, where)`` counts a repair; ``note(reason, n)`` counts
    something that is not a defect but worth a line (images without annotations);
    ``count("left out", ...)`` counts the images dropped for holding a bad record. The first
    place each reason was met is kept as an example for the summary.
    """

    def __init__(self, policy: str = "error") -> None:
        self.policy = check_policy(policy)
        self.counts: Counter = Counter()
        self.examples: dict[tuple[str, str], str] = {}

    def bad(self, reason: str, where: str, detail: str = "") -> None:
        if self.policy == "error":
            raise BadDataError(
                f"{where}: {reason}{detail} ({POLICY_KEY} 'skip' leaves such images out)"
            )
        self.count("skipped", reason, where)

    def fixed(self, reason: str, where: str) -> None:
        self.count("fixed", reason, where)

    def note(self, reason: str, n: int, where: str = "") -> None:
        self.count("kept", reason, where, n)

    def count(self, action: str, reason: str, where: str, n: int = 1) -> None:
        if n:
            self.counts[(action, reason)] += n
            self.examples.setdefault((action, reason), where)

    def num(self, action: str) -> int:
        return sum(n for (a, _), n in self.counts.items() if a == action)

    def table(self) -> str:
        rows = [
            (action, reason, n, self.examples[(action, reason)])
            for (action, reason), n in sorted(self.counts.items())
        ]
        return tabulate(rows, headers=["action", "reason", "count", "first at"], tablefmt="pipe")

    def log(self, logger: logging.Logger, title: str) -> None:
        """One summary table; a warning when anything was skipped or fixed."""
        if not self.counts:
            logger.info(f"{title}: no bad data found ({POLICY_KEY} '{self.policy}')")
            return
        level = logging.WARNING if self.num("skipped") or self.num("fixed") else logging.INFO
        logger.log(
            level,
            f"{title} ({POLICY_KEY} '{self.policy}'): {self.num('skipped')} bad records skipped "
            f"({self.num('left out')} images left out), {self.num('fixed')} fixed\n{self.table()}",
        )


_ACTIVE_REPORT: ContextVar[BadDataReport | None] = ContextVar("bad_data_report", default=None)


@contextlib.contextmanager
def collect_bad_data(report: BadDataReport) -> Iterator[BadDataReport]:
    """Makes ``report`` the one that loaders called inside the block report to."""
    token = _ACTIVE_REPORT.set(report)
    try:
        yield report
    finally:
        _ACTIVE_REPORT.reset(token)


def active_report() -> BadDataReport | None:
    return _ACTIVE_REPORT.get()
