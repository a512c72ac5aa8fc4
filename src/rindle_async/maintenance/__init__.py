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

from .abort import abort_incomplete_uploads, abort_incomplete_uploads_job
from .cleanup import cleanup_orphans, cleanup_orphans_job
from .diagnostics import Check, doctor, status
from .report import Report
from .verify import verify_storage

__all__ = ["Check", "Report", "abort_incomplete_uploads", "abort_incomplete_uploads_job", "cleanup_orphans",
           "cleanup_orphans_job", "doctor", "status", "verify_storage"]
