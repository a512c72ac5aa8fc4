"""Day-2 work, one verb per module: ``abort`` (expired upload sessions), ``cleanup`` (what
nothing holds), ``verify`` (storage against the rows) and ``diagnostics`` (status, doctor).

Each verb is one service function that the CLI, the cron jobs and hosts call, taking the
opened Rindle's ``Runtime``.  The verbs that act return a ``Report`` (``report``) and emit
``CleanupRun`` with its counts; they take ``dry_run``, and a dry run computes exactly the
same plan as a live run and changes nothing.  Storage I/O happens between transactions,
never inside one.  Abort and cleanup read their rows in keyset pages of ``batch`` rows
(``paging``) and act on each page in one transaction, so their memory does not grow with
the tables.  Stale detection and regeneration are in ``rindle_async.recipes``.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the module of this package that defines it (loaded on first use, PEP 562, so
#: a web process that only needs ``Report`` does not load the verbs and what they import)
_EXPORTS = {
    "abort_incomplete_uploads": "abort", "abort_incomplete_uploads_job": "abort",
    "cleanup_orphans": "cleanup", "cleanup_orphans_job": "cleanup",
    "Check": "diagnostics", "doctor": "diagnostics", "status": "diagnostics",
    "Report": "report", "verify_storage": "verify",
}
__all__ = ["Check", "Report", "abort_incomplete_uploads", "abort_incomplete_uploads_job", "cleanup_orphans",
           "cleanup_orphans_job", "doctor", "status", "verify_storage"]

if TYPE_CHECKING:
    from .abort import abort_incomplete_uploads, abort_incomplete_uploads_job
    from .cleanup import cleanup_orphans, cleanup_orphans_job
    from .diagnostics import Check, doctor, status
    from .report import Report
    from .verify import verify_storage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
