"""The one result shape of every maintenance verb, and the event each run emits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..events import CleanupRun

if TYPE_CHECKING:
    from ..runtime import Runtime

#: called with (done, total) as a verb goes; total 0 when it is not known in advance
Progress = Callable[[int, int], None]


def now_utc() -> datetime:
    """The clock maintenance runs by (verbs take ``now=`` to run at another time)."""
    return datetime.now(timezone.utc)


@dataclass
class Report:
    """What a maintenance run did (or, dry, would do): counts and, kept unless asked not to,
    the affected ids (``items`` grows with the rows; ``counts`` does not)."""

    worker: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)
    keep_items: bool = True

    def add(self, what: str, item: str) -> None:
        """Count one ``what`` and keep ``item`` (an id) under it."""
        self.count(what)
        if self.keep_items:
            self.items.setdefault(what, []).append(item)

    def count(self, what: str, n: int = 1) -> None:
        """Count ``n`` more ``what`` without keeping ids."""
        self.counts[what] = self.counts.get(what, 0) + n

    def summary(self) -> str:
        """One line: the verb, dry run or live, and the counts in name order."""
        mode = "dry run" if self.dry_run else "live"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing to do"
        return f"{self.worker} ({mode}): {parts}"


async def emit(rt: Runtime, report: Report) -> Report:
    """Deliver the run's ``CleanupRun`` event and return the report."""
    await rt.events.deliver([CleanupRun(worker=report.worker, dry_run=report.dry_run,
                                         counts=dict(report.counts))])
    return report


