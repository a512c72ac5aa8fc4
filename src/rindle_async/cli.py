"""``rindle-async``: day-2 commands against a host's ``Rindle`` object.

    rindle-async --app myapp.media:rindle COMMAND [options]

``--app`` (or ``RINDLE_APP``) names the host's Rindle as ``module:attribute``.
Destructive commands are dry runs unless asked otherwise; each prints a
deterministic summary, shows progress on a terminal, and exits non-zero on
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from tqdm import tqdm

from . import app_loader, maintenance, recipes
from .app import Rindle
from .errors import RindleError
from .maintenance import Report


# tqdm, not rich: no dependencies, 0.7 MB, ~8 ms to import here (rich: 3 of them, 14 MB, ~34 ms)
class _Progress:
    """A maintenance ``progress(done, total)`` callback drawing a tqdm bar on stderr: count, rate
    and ETA, or a count and rate without ETA while the total is unknown (0: cleanup)."""

    def __init__(self, label: str, unit: str) -> None:
        """Draw nothing until the first call.

        label: the verb, shown first.
        unit: what is counted, e.g. ``" sessions"``.
        """
        self.label = label
        self.unit = unit
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        """Move the bar to ``done`` of ``total``.

        done: how many so far.
        total: how many in all; 0 when unknown.
        """
        if self.bar is None:  # a verb with nothing to do draws nothing
            # initial=done: the first page took an unknown time, so the rate counts from there
            self.bar = tqdm(desc=self.label, unit=self.unit, total=total or None, initial=done,
                            dynamic_ncols=True)
        if (total or None) != self.bar.total:
            self.bar.total = total or None
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Leave the bar's last state on a line of its own, before the summary."""
        if self.bar is not None:
            self.bar.close()


def _progress(label: str, unit: str) -> _Progress | None:
    """A progress callback drawing on a terminal; None when stderr is not a terminal.

    label: the verb, shown first.
    unit: what is counted, e.g. ``" sessions"``.
    """
    return _Progress(label, unit) if sys.stderr.isatty() else None


def _print_report(report: Report, verbose: bool, progress: _Progress | None = None) -> int:
    if progress is not None:
        progress.close()
    print(report.summary())
    if verbose:
        for what in sorted(report.items):
            for item in report.items[what]:
                print(f"  {what}: {item}")
    return 0


async def _migrate(rindle: Rindle, args: argparse.Namespace) -> int:
    applied = await rindle.migrate()
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))} to schema {rindle.schema}")
    else:
        print(f"schema {rindle.schema} is up to date")
    return 0


async def _doctor(rindle: Rindle, args: argparse.Namespace) -> int:
    checks = await maintenance.doctor(rindle.runtime)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


async def _status(rindle: Rindle, args: argparse.Namespace) -> int:
    report = await maintenance.status(rindle.runtime, stuck_after=timedelta(seconds=args.stuck_after))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    for table in ("assets", "variants", "upload_sessions"):
        counts = ", ".join(f"{k}={v}" for k, v in report[table].items()) or "none"
        print(f"{table}: {counts}")
    stuck = ", ".join(f"{k}={v}" for k, v in report["stuck"].items())
    print(f"stuck longer than {report['stuck_after_seconds']}s: {stuck}")
    ledger = report["ledger"]
    ages = " ".join(f"{name}={ledger[key]:.0f}s" for name, key in (
        ("oldest_pending", "oldest_pending_seconds"), ("oldest_enqueued", "oldest_enqueued_seconds"))
        if ledger[key] is not None)
    print(f"ledger: pending={ledger['pending']} enqueued={ledger['enqueued']} "
          f"discarded={ledger['discarded']}{' ' + ages if ages else ''}")
    workers = report["workers"]
    if "error" in workers:
        print(f"workers: unknown ({workers['error']})")
    else:
        fleets = "; ".join(
            f"{queue}: {len(fleet)}"
            + (" (" + ", ".join(f"{w['id']} running {w['running']}" for w in fleet) + ")" if fleet else "")
            for queue, fleet in workers.items())
        print(f"workers holding a lease: {fleets}")
    return 0


async def _abort(rindle: Rindle, args: argparse.Namespace) -> int:
    progress = _progress("abort-incomplete-uploads", " sessions")
    report = await maintenance.abort_incomplete_uploads(
        rindle.runtime, dry_run=args.dry_run, progress=progress, keep_items=args.verbose)
    return _print_report(report, args.verbose, progress)


async def _cleanup(rindle: Rindle, args: argparse.Namespace) -> int:
    progress = _progress("cleanup-orphans", " checked")
    report = await maintenance.cleanup_orphans(
        rindle.runtime, dry_run=not args.live, grace=timedelta(hours=args.grace_hours),
        progress=progress, keep_items=args.verbose)
    code = _print_report(report, args.verbose, progress)
    if not args.live and report.counts:
        print("dry run: nothing was changed; run again with --live to do it")
    return code


async def _verify(rindle: Rindle, args: argparse.Namespace) -> int:
    progress = _progress("verify-storage", " objects")
    report = await maintenance.verify_storage(rindle.runtime, dry_run=args.dry_run, progress=progress)
    return _print_report(report, args.verbose, progress)


async def _regenerate(rindle: Rindle, args: argparse.Namespace) -> int:
    progress = _progress("regenerate-variants", " variants")
    report = await recipes.regenerate_variants(
        rindle.runtime, profile=args.profile, variant=args.variant,
        states_=tuple(args.state or ("stale", "missing", "failed")), dry_run=args.dry_run,
        progress=progress)
    return _print_report(report, args.verbose, progress)


async def _requeue(rindle: Rindle, args: argparse.Namespace) -> int:
    report = await recipes.requeue_asset(rindle.runtime, args.asset_id, dry_run=args.dry_run)
    return _print_report(report, args.verbose)


def _owners(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The owners named on the command line and in ``--owners-file``, each once, in order."""
    lines = list(args.owners)
    if args.owners_file:
        with (sys.stdin if args.owners_file == "-" else open(args.owners_file)) as handle:
            lines += [line.strip() for line in handle]
    owners: dict[tuple[str, str], None] = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        owner_type, sep, owner_id = line.partition(":")
        if not sep or not owner_type or not owner_id:
            raise RindleError(f"owner {line!r} is not TYPE:ID (e.g. user:42)")
        owners[(owner_type, owner_id)] = None
    if not owners:
        raise RindleError("name the owners to erase as TYPE:ID arguments or with --owners-file")
    return list(owners)


async def _erase(rindle: Rindle, args: argparse.Namespace) -> int:
    owners = _owners(args)
    progress = _progress("erase-owners", " owners")
    total = Report("erase_owners", not args.live, keep_items=args.verbose)
    for done, (owner_type, owner_id) in enumerate(owners, 1):  # one transaction per owner
        report = await rindle.erase_owner(owner_type, owner_id, dry_run=not args.live)
        total.count("owners")
        for what, count in report.counts.items():
            total.count(what, count)
            for item in report.items.get(what, []) if args.verbose else []:
                total.items.setdefault(what, []).append(item)
        if progress:
            progress(done, len(owners))
    code = _print_report(total, args.verbose, progress)
    if not args.live:
        print("dry run: nothing was changed; run again with --live to erase")
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rindle-async", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=os.environ.get("RINDLE_APP"),
                        help="the host's Rindle as module:attribute (default: $RINDLE_APP)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[Rindle, argparse.Namespace], Awaitable[int]],
                text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.set_defaults(handler=handler)
        cmd.add_argument("-v", "--verbose", action="store_true", help="list every affected id")
        return cmd

    command("migrate", _migrate, "apply pending database migrations (safe to repeat)")
    command("doctor", _doctor, "check the database, Redis, storages, libvips and workers")
    status = command("status", _status, "counts by state, stuck work and the job ledger")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--stuck-after", type=int, default=3600, metavar="SECONDS",
                        help="a transient state older than this counts as stuck (default 3600)")
    abort = command("abort-incomplete-uploads", _abort,
                    "expire upload sessions past their deadline and purge their staged assets")
    abort.add_argument("--dry-run", action="store_true", help="report only")
    cleanup = command("cleanup-orphans", _cleanup,
                      "remove what nothing holds (a dry run unless --live)")
    cleanup.add_argument("--live", action="store_true", help="really delete")
    cleanup.add_argument("--grace-hours", type=float, default=24.0,
                         help="minimum age of unattached assets and stray objects (default 24)")
    verify = command("verify-storage", _verify,
                     "HEAD every ready variant and original; mark missing variants")
    verify.add_argument("--dry-run", action="store_true", help="report only")
    regenerate = command("regenerate-variants", _regenerate,
                         "re-render stale, missing and failed variants with the current recipes")
    regenerate.add_argument("--profile")
    regenerate.add_argument("--variant")
    regenerate.add_argument("--state", action="append",
                            choices=("stale", "missing", "failed", "cancelled"),
                            help="repeatable; default: stale, missing and failed")
    regenerate.add_argument("--dry-run", action="store_true", help="report only")
    erase = command("erase-owners", _erase,
                    "detach every slot of each owner and purge what only it held (a dry run unless --live)")
    erase.add_argument("owners", nargs="*", metavar="TYPE:ID", help="e.g. user:42")
    erase.add_argument("--owners-file", metavar="FILE",
                       help="one TYPE:ID per line ('#' comments; '-' reads stdin)")
    erase.add_argument("--live", action="store_true",
                       help="really erase; an interrupted run is resumed by running it again")
    requeue = command("requeue", _requeue,
                      "re-run promotion or the failed variants of one asset")
    requeue.add_argument("asset_id")
    requeue.add_argument("--dry-run", action="store_true", help="report only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rindle-async`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.app:
        parser.error("--app module:attribute (or RINDLE_APP) is required")

    async def run() -> int:
        rindle = app_loader.load_app(args.app)
        async with rindle:
            code: int = await args.handler(rindle, args)
            return code

    try:
        return asyncio.run(run())
    except RindleError as exc:
        print(f"rindle-async: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError as exc:
        print(f"rindle-async: {exc}; run `rindle-async migrate` first", file=sys.stderr)
        return 1
    except (OSError, ConnectionError, asyncpg.PostgresError) as exc:
        print(f"rindle-async: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
