"""Day-2 verbs at scale: ``abort-incomplete-uploads`` and ``cleanup-orphans --live``.

In a fresh schema (dropped at the end) it writes, at two sizes (``--small`` and ``--rows``),
ROWS expired upload sessions with their staged assets, ROWS unattached ready assets
older than the grace period (each with its completed session and rendered variant) and
ROWS / 10 attached ones.  The rows are clones of rows the library itself wrote through
``initiate_upload``, ``verify_upload`` and the promotion and render jobs, with fresh ids,
keys and timestamps (INSERT ... SELECT over generate_series, so set-up takes seconds);
the storage root holds no files.  Each verb then runs as a user runs it: the ``rindle-async`` console
script in a subprocess (``--app maintenance:rindle``, this module), timed, its peak RSS
read from ``os.wait4``.  The ratio of the peaks at the two sizes shows whether memory
grows with the rows (target x1.0).

Every SQL statement the two verbs send is captured from a small live run in-process
(asyncpg's query logger), then EXPLAINed with its captured arguments against the
big tables just before that verb runs; a Seq Scan on a big table is counted
(``maintenance_seq_scans``, target 0).  The app runs with ``relay=False``, so the
figures are the verbs' own cost: the purge jobs they stage wait in the ledger (a
host's relay or the worker would send them to Redis).

    .venv/bin/python bench/maintenance.py [--rows 100000] [--small 10000] [--smoke] [--out DIR]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import DATABASE_URL, REDIS_URL, Report, arguments  # noqa: E402

from rindle_async import LocalStorage, Profile, Rindle, Variant, maintenance  # noqa: E402
from rindle_async.ledger.runner import run_job  # noqa: E402

BENCH = Path(__file__).resolve().parent
COMMAND = Path(sys.executable).parent / "rindle-async"
BIG_TABLES = {"upload_sessions", "assets", "variants", "attachments", "jobs"}
GRACE = timedelta(hours=24)


def build(schema: str | None = None, root: str | None = None, pool: asyncpg.Pool | None = None
          ) -> Rindle:
    """The host app the bench measures: one profile on local storage, one variant."""
    storage = LocalStorage(root=root or os.environ["BENCH_ROOT"], base_url="http://127.0.0.1:9/m",
                           secret="bench-maintenance-secret")
    profile = Profile(name="photos", storage="local", allow_mime=("image/jpeg",),
                      variants={"thumb": Variant(width=64, height=64, fit="cover", format="webp")})
    where = {"pool": pool} if pool is not None else {"database_url": DATABASE_URL}
    return Rindle(**where, redis_url=REDIS_URL, schema=schema or os.environ["BENCH_SCHEMA"],
                  queue="bench-maintenance", storages={"local": storage}, profiles=[profile],
                  relay=False, processes=1)


def __getattr__(name: str) -> Rindle:
    # `rindle-async --app maintenance:rindle` imports this module: build from the environment
    if name == "rindle":
        return build()
    raise AttributeError(name)


# -- rows the library writes, cloned ------------------------------------------------------


async def templates(rindle: Rindle) -> dict[str, uuid.UUID]:
    """One asset of each kind, written by the library itself: a direct upload left open (its
    asset staged), and two direct uploads verified, promoted and rendered, one attached."""
    import pyvips

    image = pyvips.Image.black(96, 72).new_from_image([30, 120, 200]).jpegsave_buffer(Q=85)
    tickets = [await rindle.initiate_upload("photos", filename="holiday.jpg",
                                            content_type="image/jpeg", byte_size=len(image))
               for _ in range(3)]
    for ticket in tickets[1:]:  # the client sends the bytes, then the host verifies
        key = await rindle.runtime.pool.fetchval(f"SELECT storage_key FROM {rindle.schema}.upload_sessions"
                                         " WHERE id = $1::uuid", ticket.session_id)
        await rindle.storages["local"].put(key, image, content_type="image/jpeg")
        await rindle.verify_upload(ticket.session_id)
    for _ in range(3):  # promotion stages the render, the render finishes the asset
        for job_id, kind in await rindle.runtime.pool.fetch(f"SELECT id, kind FROM {rindle.schema}.jobs"):
            await run_job(rindle.runtime, rindle.config.ledger.kinds[kind], job_id)
    await rindle.attach(tickets[2].asset_id, owner_type="user", owner_id="template", slot="avatar")
    states = {t.asset_id: (await rindle.get_asset(t.asset_id)).state for t in tickets[1:]}
    assert set(states.values()) == {"ready"}, states
    return {what: uuid.UUID(t.asset_id) for what, t in zip(("session", "unattached", "attached"),
                                                            tickets)}


async def clone(conn: asyncpg.Connection, schema: str, template: uuid.UUID, copies: int,
                age: timedelta) -> None:
    """``copies`` copies of an asset and every row that hangs off it, ``age`` older (plus a
    second per copy): new ids, keys under the new id, other columns as the library wrote them."""
    await conn.execute("DROP TABLE IF EXISTS clones")
    await conn.execute("CREATE TEMP TABLE clones AS SELECT n,"
                       " gen_random_uuid() AS id, $1::interval + n * interval '1 second' AS shift"
                       " FROM generate_series(1, $2::int) n", age, copies)
    old = f"left(t.asset_id::text, 2) || '/' || t.asset_id::text"
    new = "left(c.id::text, 2) || '/' || c.id::text"
    for table, key in (("assets", "id"), ("variants", "asset_id"), ("upload_sessions", "asset_id"),
                       ("attachments", "asset_id")):
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position", schema, table)
        values = []
        for name, kind in columns:
            if name == key:
                values.append("c.id")
            elif name == "id":
                values.append("gen_random_uuid()")
            elif name == "storage_key":
                values.append(f"replace(t.storage_key, {old}, {new})")
            elif name == "owner_id":
                values.append("c.n::text")
            elif kind == "timestamp with time zone":
                values.append(f"t.{name} - c.shift")
            else:
                values.append(f"t.{name}")
        source = (f"(SELECT *, id AS asset_id FROM {schema}.assets)" if table == "assets"
                  else f"{schema}.{table}")
        await conn.execute(
            f"INSERT INTO {schema}.{table} ({', '.join(name for name, _ in columns)})"
            f" SELECT {', '.join(values)} FROM {source} t CROSS JOIN clones c"
            f" WHERE t.asset_id = $1", template)


async def seed(rindle: Rindle, rows: int) -> None:
    """ROWS expired sessions with staged assets, ROWS unattached and ROWS / 10 attached assets,
    all older than the grace period; no files in storage."""
    made = await templates(rindle)
    async with rindle.runtime.pool.acquire() as conn:
        for what, copies in (("session", rows), ("unattached", rows), ("attached", rows // 10)):
            await clone(conn, rindle.schema, made[what], copies, GRACE * 3)
        await conn.execute(f"DELETE FROM {rindle.schema}.attachments"
                           " WHERE asset_id = ANY($1::uuid[])", list(made.values()))
        await conn.execute(f"DELETE FROM {rindle.schema}.assets WHERE id = ANY($1::uuid[])",
                           list(made.values()))
        await conn.execute(f"TRUNCATE {rindle.schema}.processing_runs, {rindle.schema}.jobs")
        await vacuum(conn, rindle.schema)
    shutil.rmtree(rindle.storages["local"].root, ignore_errors=True)


async def vacuum(conn: asyncpg.Connection, schema: str) -> None:
    """What autovacuum does after bulk writes: statistics and the visibility map."""
    for table in sorted(BIG_TABLES):
        await conn.execute(f"VACUUM ANALYZE {schema}.{table}")


# -- the SQL the verbs send, and its plans --------------------------------------------------


async def capture(schema: str, root: str, rows: int) -> dict[str, list[tuple[str, tuple]]]:
    """Every distinct statement (with the arguments of its first use) that a live abort and a
    live cleanup send, by verb, from a small run of the real code (and, under ``open``, what
    opening the app sends)."""
    seen: dict[str, dict[str, tuple]] = {"open": {}, "abort": {}, "cleanup": {}}
    verb: list[str | None] = [None]

    def record(query: Any) -> None:
        # the verbs' own statements name the schema (pool resets and BEGIN/COMMIT do not)
        if verb[0] and f"{schema}." in query.query:
            seen[verb[0]].setdefault(query.query, tuple(query.args or ()))

    async def during(name: str | None) -> None:
        await asyncio.sleep(0)  # loggers are called soon after each query: let them run first
        verb[0] = name

    pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=4,
                                     init=lambda conn: _log_queries(conn, record))
    try:
        async with build(schema, root, pool) as rindle:
            await rindle.migrate()
            await seed(rindle, rows)
            stray = Path(root, "photos", "ab", str(uuid.uuid4()), "leftover.bin")
            stray.parent.mkdir(parents=True)
            stray.write_bytes(b"left behind by an interrupted upload")
            old = time.time() - 3 * GRACE.total_seconds()
            os.utime(stray, (old, old))
            await during("abort")
            await maintenance.abort_incomplete_uploads(rindle.runtime, progress=lambda done, total: None,
                                                       batch=max(2, rows // 4))
            await during("cleanup")
            await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=GRACE,
                                              progress=lambda done, total: None,
                                              batch=max(2, rows // 4))
            await during("open")
            async with build(schema, root, pool):  # what opening the app (as the CLI does) sends
                pass
            await during(None)
    finally:
        await pool.close()
    return {name: list(found.items()) for name, found in seen.items()}


async def _log_queries(conn: asyncpg.Connection, record: Any) -> None:
    conn.add_query_logger(record)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


async def explain(conn: asyncpg.Connection, query: str, args: tuple) -> dict[str, Any]:
    """The plan's node types (with relation and index) and the big tables it seq-scans."""
    text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
    nodes = list(plan_nodes(json.loads(text)[0]["Plan"]))
    shown = [" ".join(filter(None, [n["Node Type"], n.get("Index Name") or n.get("Relation Name")]))
             for n in nodes]
    seq = sorted({n["Relation Name"] for n in nodes
                  if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG_TABLES})
    return {"nodes": shown, "seq_scans": seq}


def label(query: str, schema: str) -> str:
    words = re.sub(r"\s+", " ", query.replace(f"{schema}.", "")).strip()
    return words if len(words) <= 110 else words[:107] + "..."


# -- running the console script -------------------------------------------------------------


def run_cli(schema: str, root: str, *args: str) -> tuple[float, float, str]:
    """Run ``rindle-async --app maintenance:rindle ARGS``: seconds, peak RSS in MB, stdout."""
    env = {**os.environ, "BENCH_SCHEMA": schema, "BENCH_ROOT": root,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([str(COMMAND), "--app", "maintenance:rindle", *args], env=env,
                                   cwd=BENCH, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not all children's
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"rindle-async {' '.join(args)} exited {process.returncode}: {stderr}")
    return seconds, usage.ru_maxrss / 1024, stdout  # ru_maxrss is in KiB on Linux


async def measure(schema: str, root: str, rows: int,
                  statements: dict[str, list[tuple[str, tuple]]], capture_schema: str
                  ) -> dict[str, Any]:
    """Seed ROWS, then per verb: EXPLAIN its statements on these tables and run it."""
    async with build(schema, root) as rindle:
        await rindle.migrate()
        await seed(rindle, rows)
    figures: dict[str, Any] = {"plans": []}
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        for verb, args, expected in (
                ("abort", ["abort-incomplete-uploads"],
                 f"abort_incomplete_uploads (live): assets_tombstoned={rows}, sessions_expired={rows}"),
                ("cleanup", ["cleanup-orphans", "--live"],
                 f"cleanup_orphans (live): unattached_assets={rows}")):
            await vacuum(conn, schema)
            for sender in (verb, "open") if verb == "abort" else (verb,):
                for query, params in statements[sender]:
                    plan = await explain(conn, query.replace(f"{capture_schema}.", f"{schema}."),
                                         params)
                    figures["plans"].append({"verb": sender, "query": label(query, capture_schema),
                                             **plan})
            seconds, rss, stdout = run_cli(schema, root, *args)
            if stdout.splitlines()[0] != expected:
                raise RuntimeError(f"expected {expected!r}, the command printed {stdout!r}")
            figures[verb] = (seconds, rss)
    finally:
        await conn.close()
    return figures


async def drop(*schemas: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], rows=100_000, small=10_000)
    rows, small = (500, 50) if args.smoke else (args.rows, args.small)
    report = Report("maintenance", f"abort-incomplete-uploads and cleanup-orphans --live,"
                    f" {small:,} and {rows:,} rows (rindle-async in a subprocess)", smoke=args.smoke)
    tag = uuid.uuid4().hex[:8]
    schemas = {name: f"bench_maint_{name}_{tag}" for name in ("capture", "empty", "small", "big")}
    work = Path(tempfile.mkdtemp(prefix="bench-maintenance-"))
    try:
        statements = await capture(schemas["capture"], str(work / "capture"), 8)
        async with build(schemas["empty"], str(work / "empty")) as rindle:
            await rindle.migrate()
        base_seconds, base_rss, _ = run_cli(schemas["empty"], str(work / "empty"),
                                            "abort-incomplete-uploads")
        at = {name: await measure(schemas[name], str(work / name), size, statements,
                                  schemas["capture"])
              for name, size in (("small", small), ("big", rows))}
        report.row("nothing to do (abort on an empty schema): wall", base_seconds, "s", digits=2)
        report.row("nothing to do: peak RSS", base_rss, "MB", key="baseline_peak_rss_mb")
        for verb, title in (("abort", "abort-incomplete-uploads"), ("cleanup", "cleanup-orphans --live")):
            (small_s, small_rss), (big_s, big_rss) = at["small"][verb], at["big"][verb]
            report.row(f"{title}, {small:,} rows: wall", small_s, "s", digits=2)
            report.row(f"{title}, {rows:,} rows: wall", big_s, "s", key=f"{verb}_seconds", digits=2)
            report.row(f"{title}, {rows:,} rows: rows/s", rows / big_s, "rows/s",
                       key=f"{verb}_rows_per_second", digits=0)
            report.row(f"{title}, {small:,} rows: peak RSS", small_rss, "MB",
                       key=f"{verb}_peak_rss_small_mb")
            report.row(f"{title}, {rows:,} rows: peak RSS", big_rss, "MB", baseline=small_rss,
                       key=f"{verb}_peak_rss_mb")
            # named after the default sizes; "sizes" says which were run
            report.ratio(f"{verb}_rss_100k_vs_10k", big_rss, small_rss)
        report.results["sizes"] = {"rows": rows, "small": small}
        plans = at["big"]["plans"]
        verb_plans = [p for p in plans if p["verb"] != "open"]
        report.results["maintenance_seq_scans"] = sum(1 for p in verb_plans if p["seq_scans"])
        report.results["open_seq_scans"] = sum(1 for p in plans if p["verb"] == "open" and p["seq_scans"])
        report.results["plans"] = plans
        report.row(f"statements the verbs send (EXPLAINed at {rows:,} rows)", len(verb_plans), "",
                   digits=0)
        report.row("... of which with a Seq Scan on a big table", report.results["maintenance_seq_scans"],
                   "", digits=0)
        for plan in plans:
            flag = f"  SEQ SCAN ON {', '.join(plan['seq_scans'])}" if plan["seq_scans"] else ""
            report.note(f"[{plan['verb']}] {plan['query']}")
            report.note(f"    {' > '.join(plan['nodes'])}{flag}")
    finally:
        await drop(*schemas.values())
        shutil.rmtree(work, ignore_errors=True)
    print(f"results: {report.finish(args.out)}")


if __name__ == "__main__":
    asyncio.run(main())
