"""The real ``rindle-async`` command in a subprocess against the host app (``hostapp:rindle``):
every verb's exact summary and exit code, dry runs that change nothing, and the errors."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pathlib
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import uuid

import pytest
from arq.connections import ArqRedis

from rindle_async import VerificationFailed
from rindle_async.liveness import Liveness, WorkerInfo

from .conftest import drain
from .media import jpeg

TESTS = pathlib.Path(__file__).resolve().parent
COMMAND = pathlib.Path(sys.executable).parent / "rindle-async"


@pytest.fixture
def cli(host_env, tmp_path):
    """``await cli("status", "--json")``: run the console script; stderr never draws progress.
    With ``terminal=True`` stdout and stderr share a pseudo-terminal and ``stdout`` is what it
    shows (``screen``)."""
    base = {**os.environ, **host_env, "RINDLE_APP": "hostapp:rindle",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}

    async def run(*args: str, without_app: bool = False,
                  terminal: bool = False) -> subprocess.CompletedProcess:
        env = {k: v for k, v in base.items() if not (without_app and k == "RINDLE_APP")}
        command = [str(COMMAND), *args]
        if terminal:
            return await asyncio.to_thread(on_a_terminal, command, env, tmp_path)
        # in a thread: the host's relay keeps running on this loop meanwhile
        done = await asyncio.to_thread(subprocess.run, command, env=env, cwd=tmp_path,
                                       capture_output=True, text=True, timeout=60)
        assert "\r" not in done.stderr  # not a terminal: no progress bars
        return done

    return run


def on_a_terminal(command: list[str], env: dict[str, str], cwd: pathlib.Path
                  ) -> subprocess.CompletedProcess:
    """Run ``command`` with stdout and stderr on a pseudo-terminal 100 columns wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    received = bytearray()
    with subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=follower, stderr=follower) as process:
        os.close(follower)
        try:
            while select.select([leader], [], [], 60)[0] and (chunk := os.read(leader, 4096)):
                received += chunk
        except OSError:  # EIO: the command exited and closed its end
            pass
        finally:
            os.close(leader)
        code = process.wait(timeout=60)
    return subprocess.CompletedProcess(command, code, "\n".join(screen(received.decode())), "")


def screen(received: str) -> list[str]:
    """The lines a terminal shows after ``received``: a carriage return goes back to the start
    of the line, and what follows overwrites it."""
    shown, column = [""], 0
    for part in re.split(r"(\r|\n)", received):
        if part == "\r":
            column = 0
        elif part == "\n":
            shown.append("")
        else:
            shown[-1] = shown[-1][:column] + part + shown[-1][column + len(part):]
            column += len(part)
    return [line.rstrip() for line in shown if line.strip()]


def lines(text: str) -> list[str]:
    return text.splitlines()


async def state_of(rindle, table: str, row_id) -> str:
    return await rindle.runtime.pool.fetchval(f"SELECT state FROM {rindle.schema}.{table} WHERE id = $1::uuid",
                                      str(row_id))


async def jobs(rindle, kind: str) -> list[dict]:
    rows = await rindle.runtime.pool.fetch(f"SELECT status, args FROM {rindle.schema}.jobs WHERE kind = $1"
                                   " ORDER BY id", kind)
    return [{"status": r["status"], "args": json.loads(r["args"])} for r in rows]


async def variants(rindle, asset_id: str) -> dict[str, dict]:
    """Variant rows of an asset by name: id (text), state and storage_key."""
    rows = await rindle.runtime.pool.fetch(f"SELECT id::text, name, state, storage_key FROM {rindle.schema}"
                                   ".variants WHERE asset_id = $1::uuid", asset_id)
    return {r["name"]: dict(r) for r in rows}


async def uploaded(rindle, redis_url, data: bytes, filename: str = "a.jpg"):
    asset = await rindle.upload("photos", data, filename=filename)
    await drain(rindle, redis_url)
    return await rindle.get_asset(asset.id)


# -- migrate and doctor ------------------------------------------------------------------


async def test_migrate_and_doctor_on_a_fresh_schema(cli, schema, redis, db):
    doctor = await cli("doctor")
    assert doctor.returncode == 1, doctor.stderr
    out = lines(doctor.stdout)
    assert "FAIL migrations: migrations [1, 2, 3, 4, 5, 6] are not applied; run `rindle-async migrate`" in out
    assert out[-1] == "5 passed, 3 failed"
    assert f'FAIL ledger: UndefinedTableError: relation "{schema}.jobs" does not exist' in out
    status = await cli("status")
    assert status.returncode == 1 and status.stdout == ""
    assert "run `rindle-async migrate` first" in status.stderr

    first = await cli("migrate")
    assert (first.returncode, first.stdout) == (0, f"applied migrations 1, 2, 3, 4, 5, 6 to schema {schema}\n")
    again = await cli("migrate")
    assert (again.returncode, again.stdout) == (0, f"schema {schema} is up to date\n")

    doctor = await cli("doctor")
    assert doctor.returncode == 1, doctor.stderr
    out = lines(doctor.stdout)
    assert re.fullmatch(r"ok   database: PostgreSQL \S+.*", out[0])
    assert re.fullmatch(r"ok   libvips: \S+ saves avif, jpeg, png, webp", out[5])
    assert re.fullmatch(r"ok   input formats: decodes jpeg, png, webp, gif, tiff, svg, avif.*", out[6])
    assert out[1:5] + out[7:] == [
        f"ok   migrations: schema {schema} is up to date",
        "ok   redis: reachable, maxmemory-policy noeviction",
        f"FAIL workers: no live worker on q-{schema} (workers holding a lease: q-{schema}: 0); "
        "is `arq rindle_async.WorkerSettings` running?",
        "ok   storage local: local reachable",
        "ok   ledger: pending=0 enqueued=0 discarded=0",
        "7 passed, 1 failed",
    ]

    # the lease a running worker holds (and renews every few seconds)
    lease = Liveness(ArqRedis(connection_pool=redis.connection_pool),
                     WorkerInfo("host:1:abc", f"q-{schema}", "host", 1, 0.0), jobs=dict,
                     in_progress_ttl=60)
    await lease.beat()
    try:
        doctor = await cli("doctor")
        status = await cli("status")
    finally:
        await lease.stop()
    assert doctor.returncode == 0, doctor.stdout
    assert f"ok   workers: workers holding a lease: q-{schema}: 1" in lines(doctor.stdout)
    assert lines(doctor.stdout)[-1] == "8 passed, 0 failed"
    assert f"workers holding a lease: q-{schema}: 1 (host:1:abc running 0)" in lines(status.stdout)
    doctor = await cli("doctor")  # a worker that stopped has left the registry
    assert doctor.returncode == 1 and f"q-{schema}: 0" in doctor.stdout


async def test_usage_and_app_errors(cli, db):
    missing = await cli("status", without_app=True)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("usage: rindle-async")
    assert "--app module:attribute (or RINDLE_APP) is required" in missing.stderr
    nosuch = await cli("--app", "nosuch:thing", "status")
    assert nosuch.returncode == 1 and nosuch.stdout == ""
    assert nosuch.stderr.startswith("rindle-async: --app 'nosuch:thing': cannot import 'nosuch'")
    shapeless = await cli("--app", "hostapp", "status")
    assert shapeless.returncode == 1
    assert "must look like module:attribute" in shapeless.stderr
    malformed = await cli("requeue", "not-a-uuid")
    assert (malformed.returncode, malformed.stdout) == (1, "")
    assert malformed.stderr == "rindle-async: asset_id 'not-a-uuid' is not a UUID\n"
    unknown = await cli("frobnicate")
    assert unknown.returncode == 2 and "invalid choice: 'frobnicate'" in unknown.stderr


# -- status -------------------------------------------------------------------------------


async def test_status_counts_by_state_and_stuck_work(cli, host, redis_url):
    await uploaded(host, redis_url, jpeg(120, 90))
    waiting = await host.upload("photos", jpeg(), filename="b.jpg")  # promotion not run: validating
    await host.initiate_upload("photos", filename="c.jpg", content_type="image/jpeg", byte_size=100)

    text = await cli("status")
    assert text.returncode == 0, text.stderr
    out = lines(text.stdout)
    assert out[:4] == [
        "assets: ready=1, staged=1, validating=1",
        "variants: ready=4",
        "upload_sessions: signed=1",
        "stuck longer than 3600s: assets=0, variants=0, upload_sessions=0",
    ]
    assert re.fullmatch(r"ledger: pending=[01] enqueued=[01] discarded=0 oldest_\w+=\d+s", out[4])
    assert out[5:] == [f"workers holding a lease: {host.config.ledger.queue}: 0"]

    raw = await cli("status", "--json", "--stuck-after", "0")
    assert raw.returncode == 0, raw.stderr
    report = json.loads(raw.stdout)
    assert report["assets"] == {"ready": 1, "staged": 1, "validating": 1}
    assert report["variants"] == {"ready": 4}
    assert report["upload_sessions"] == {"signed": 1}
    assert report["stuck"] == {"assets": 1, "variants": 0, "upload_sessions": 0}
    assert report["stuck_after_seconds"] == 0
    ledger = report["ledger"]
    assert ledger["pending"] + ledger["enqueued"] == 1 and ledger["discarded"] == 0

    text = await cli("status", "--stuck-after", "0")
    assert "stuck longer than 0s: assets=1, variants=0, upload_sessions=0" in lines(text.stdout)
    await drain(host, redis_url)
    assert await state_of(host, "assets", waiting.id) == "ready"
    report = json.loads((await cli("status", "--json", "--stuck-after", "0")).stdout)
    assert report["assets"] == {"ready": 2, "staged": 1}
    assert report["stuck"] == {"assets": 0, "variants": 0, "upload_sessions": 0}
    assert report["ledger"] == {"pending": 0, "enqueued": 0, "discarded": 0,
                                "oldest_pending_seconds": None, "oldest_enqueued_seconds": None}
    assert report["workers"] == {host.config.ledger.queue: []}
    text = await cli("status")
    assert lines(text.stdout)[-2] == "ledger: pending=0 enqueued=0 discarded=0"


# -- abort-incomplete-uploads ---------------------------------------------------------------


async def test_abort_incomplete_uploads_dry_run_then_live(cli, host, redis_url):
    ticket = await host.initiate_upload("photos", filename="late.jpg", content_type="image/jpeg",
                                        byte_size=100)
    fresh = await host.initiate_upload("photos", filename="soon.jpg", content_type="image/jpeg",
                                       byte_size=100)
    await host.runtime.pool.execute(f"UPDATE {host.schema}.upload_sessions SET expires_at = now() - interval"
                            " '1 minute' WHERE id = $1::uuid", ticket.session_id)

    dry = await cli("abort-incomplete-uploads", "--dry-run")
    assert (dry.returncode, dry.stdout) == (
        0, "abort_incomplete_uploads (dry run): assets_tombstoned=1, sessions_expired=1\n")
    assert await state_of(host, "upload_sessions", ticket.session_id) == "signed"
    assert await state_of(host, "assets", ticket.asset_id) == "staged"
    assert await jobs(host, "purge_storage") == []

    live = await cli("abort-incomplete-uploads", "-v")
    assert (live.returncode, live.stdout) == (0, "\n".join([
        "abort_incomplete_uploads (live): assets_tombstoned=1, sessions_expired=1",
        f"  assets_tombstoned: {ticket.asset_id}",
        f"  sessions_expired: {ticket.session_id}", ""]))
    assert await state_of(host, "upload_sessions", ticket.session_id) == "expired"
    assert await state_of(host, "assets", ticket.asset_id) == "deleted"
    assert [j["args"] for j in await jobs(host, "purge_storage")] == [{"asset_id": ticket.asset_id}]
    assert await state_of(host, "upload_sessions", fresh.session_id) == "signed"

    again = await cli("abort-incomplete-uploads")
    assert (again.returncode, again.stdout) == (0, "abort_incomplete_uploads (live): nothing to do\n")
    await drain(host, redis_url)  # the purge drops the tombstone
    assert await state_of(host, "assets", ticket.asset_id) is None


# what tqdm draws: "[elapsed<eta, rate unit/s]", "?" where it cannot tell yet (a single page)
ETA, RATE = r"(\d\d:\d\d|\?)", r"(\d+\.\d\d|\?)"


async def test_progress_on_a_terminal_then_the_summary_on_a_line_of_its_own(cli, host, redis_url):
    """A terminal shows a bar with counts, rate and ETA when the total is known; a count and
    rate without ETA when it is not (cleanup); nothing for a verb with nothing to do."""
    await uploaded(host, redis_url, jpeg(80, 60))
    ticket = await host.initiate_upload("photos", filename="late.jpg", content_type="image/jpeg",
                                        byte_size=100)
    await host.runtime.pool.execute(f"UPDATE {host.schema}.upload_sessions SET expires_at = now() - interval"
                            " '1 minute' WHERE id = $1::uuid", ticket.session_id)

    abort = await cli("abort-incomplete-uploads", terminal=True)
    assert abort.returncode == 0, abort.stdout
    bar, summary = lines(abort.stdout)
    assert re.fullmatch(rf"abort-incomplete-uploads: 100%\|\S+\| 1/1 \[00:0\d<{ETA}, {RATE} "
                        r"sessions/s\]", bar), bar
    assert summary == "abort_incomplete_uploads (live): assets_tombstoned=1, sessions_expired=1"
    again = await cli("abort-incomplete-uploads", terminal=True)
    assert (again.returncode, again.stdout) == (0, "abort_incomplete_uploads (live): nothing to do")

    cleanup = await cli("cleanup-orphans", "--grace-hours", "0", terminal=True)
    assert cleanup.returncode == 0, cleanup.stdout
    count, *summary = lines(cleanup.stdout)
    # 2 assets, then the original and 4 variants under photos/
    assert re.fullmatch(rf"cleanup-orphans: 7 checked \[00:0\d, {RATE} checked/s\]", count), count
    assert summary == ["cleanup_orphans (dry run): unattached_assets=1",
                       "dry run: nothing was changed; run again with --live to do it"]

    verify = await cli("verify-storage", "--dry-run", terminal=True)
    assert verify.returncode == 0, verify.stdout
    bar, summary = lines(verify.stdout)
    assert re.fullmatch(rf"verify-storage: 100%\|\S+\| 5/5 \[00:0\d<{ETA}, {RATE} objects/s\]",
                        bar), bar
    assert summary == "verify_storage (dry run): checked=5"


# -- cleanup-orphans -------------------------------------------------------------------------


async def test_cleanup_orphans_is_a_dry_run_unless_live(cli, host, redis_url):
    root = pathlib.Path(host.storages["local"].root)
    unattached = await uploaded(host, redis_url, jpeg(80, 60))
    held = await uploaded(host, redis_url, jpeg(80, 60), filename="held.jpg")
    await host.attach(held.id, owner_type="user", owner_id="1", slot="avatar")
    # a direct upload whose bytes have the wrong size: session failed, asset quarantined
    ticket = await host.initiate_upload("photos", filename="short.jpg", content_type="image/jpeg",
                                        byte_size=1000)
    key = await host.runtime.pool.fetchval(f"SELECT storage_key FROM {host.schema}.upload_sessions"
                                   " WHERE id = $1::uuid", ticket.session_id)
    await host.storages["local"].put(key, b"x" * 10)
    with pytest.raises(VerificationFailed, match="10 bytes but 1000 were declared"):
        await host.verify_upload(ticket.session_id)
    # a tombstone whose purge job was lost
    lost = await host.upload("photos", jpeg(), filename="lost.jpg")
    async with host.transaction() as conn:
        await conn.execute(f"UPDATE {host.schema}.assets SET state = 'deleted' WHERE id = $1::uuid",
                           lost.id)
    await host.runtime.pool.execute(f"DELETE FROM {host.schema}.jobs")
    # an object no row refers to
    stray = root / "photos" / "ab" / str(uuid.uuid4()) / "leftover.bin"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"stray")

    def snapshot():
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    async def states():
        return {str(r["id"]): r["state"] for r in await host.runtime.pool.fetch(
            f"SELECT id, state FROM {host.schema}.assets")}

    files, before = snapshot(), await states()
    default = await cli("cleanup-orphans")  # 24 h of grace: only the failed upload's asset
    assert (default.returncode, default.stdout) == (0, "\n".join([
        "cleanup_orphans (dry run): session_assets=1",
        "dry run: nothing was changed; run again with --live to do it", ""]))
    dry = await cli("cleanup-orphans", "--grace-hours", "0", "-v")
    assert dry.returncode == 0, dry.stderr
    expected = "purges_restaged=1, session_assets=1, stray_objects=1, unattached_assets=1"
    assert lines(dry.stdout) == [
        f"cleanup_orphans (dry run): {expected}",
        f"  purges_restaged: {lost.id}",
        f"  session_assets: {ticket.asset_id}",
        f"  stray_objects: local:{stray.relative_to(root)}",
        f"  unattached_assets: {unattached.id}",
        "dry run: nothing was changed; run again with --live to do it",
    ]
    assert snapshot() == files and await states() == before
    assert await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.jobs") == 0

    live = await cli("cleanup-orphans", "--live", "--grace-hours", "0")
    assert (live.returncode, live.stdout) == (0, f"cleanup_orphans (live): {expected}\n")
    assert not stray.exists()
    after = await states()
    assert {k: after[k] for k in (unattached.id, ticket.asset_id, lost.id, held.id)} == {
        unattached.id: "deleted", ticket.asset_id: "deleted", lost.id: "deleted", held.id: "ready"}
    purges = sorted(j["args"]["asset_id"] for j in await jobs(host, "purge_storage"))
    assert purges == sorted([unattached.id, ticket.asset_id, lost.id])

    settled = await cli("cleanup-orphans", "--grace-hours", "0")
    assert (settled.returncode, settled.stdout) == (0, "cleanup_orphans (dry run): nothing to do\n")
    await drain(host, redis_url)
    assert set(await states()) == {held.id}


# -- verify-storage, regenerate-variants -------------------------------------------------------


async def test_verify_storage_marks_a_lost_variant_and_regenerate_renders_it(cli, host, redis_url):
    asset = await uploaded(host, redis_url, jpeg(160, 120))
    thumb = (await variants(host, asset.id))["thumb"]
    thumb_id, path = thumb["id"], pathlib.Path(host.storages["local"].root) / thumb["storage_key"]
    path.unlink()

    dry = await cli("verify-storage", "--dry-run")
    assert (dry.returncode, dry.stdout) == (
        0, "verify_storage (dry run): checked=5, variants_missing=1\n")
    assert await state_of(host, "variants", thumb_id) == "ready"
    live = await cli("verify-storage", "-v")
    assert (live.returncode, live.stdout) == (0, "\n".join([
        "verify_storage (live): checked=5, variants_missing=1",
        f"  variants_missing: {thumb_id}", ""]))
    assert await state_of(host, "variants", thumb_id) == "missing"

    none = await cli("regenerate-variants", "--state", "failed", "--dry-run")
    assert (none.returncode, none.stdout) == (0, "regenerate_variants (dry run): nothing to do\n")
    other = await cli("regenerate-variants", "--variant", "large")
    assert (other.returncode, other.stdout) == (0, "regenerate_variants (live): nothing to do\n")
    dry = await cli("regenerate-variants", "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "regenerate_variants (dry run): requeued=1\n")
    assert await state_of(host, "variants", thumb_id) == "missing"
    assert await jobs(host, "process_variant") == []
    live = await cli("regenerate-variants", "--profile", "photos", "--variant", "thumb", "-v")
    assert (live.returncode, live.stdout) == (0, "\n".join([
        "regenerate_variants (live): requeued=1", f"  requeued: {thumb_id}", ""]))
    assert await state_of(host, "variants", thumb_id) == "queued"
    assert await state_of(host, "assets", asset.id) == "processing"

    await drain(host, redis_url)
    assert await state_of(host, "variants", thumb_id) == "ready"
    assert await state_of(host, "assets", asset.id) == "ready"
    assert path.exists()
    clean = await cli("verify-storage")
    assert (clean.returncode, clean.stdout) == (0, "verify_storage (live): checked=5\n")


async def test_verify_storage_marks_a_lost_stale_variant_missing(cli, host, redis_url):
    asset = await uploaded(host, redis_url, jpeg(160, 120))
    thumb = (await variants(host, asset.id))["thumb"]
    async with host.transaction() as conn:  # what a recipe change does (reconcile_profiles)
        await conn.execute(f"UPDATE {host.schema}.variants SET state = 'stale' WHERE id = $1::uuid",
                           thumb["id"])
    (pathlib.Path(host.storages["local"].root) / thumb["storage_key"]).unlink()
    live = await cli("verify-storage")
    assert live.returncode == 0, live.stderr
    assert live.stdout == "verify_storage (live): checked=5, variants_missing=1\n"
    assert await state_of(host, "variants", thumb["id"]) == "missing"


# -- requeue -----------------------------------------------------------------------------------


async def test_requeue_an_asset_with_failed_variants(cli, host, redis_url):
    whole = jpeg(800, 600)
    asset = await uploaded(host, redis_url, whole[: len(whole) * 2 // 3], filename="cut.jpg")
    assert asset.state == "degraded"
    assert {v.state for v in asset.variants.values()} == {"failed"}
    rows = await variants(host, asset.id)
    ids = [rows[name]["id"] for name in sorted(rows)]  # the report's order

    dry = await cli("requeue", asset.id, "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "requeue (dry run): requeued=4\n")
    assert await state_of(host, "assets", asset.id) == "degraded"
    assert {j["status"] for j in await jobs(host, "process_variant")} == {"discarded"}

    live = await cli("requeue", asset.id, "-v")
    assert live.returncode == 0, live.stderr
    assert lines(live.stdout) == ["requeue (live): requeued=4", *[f"  requeued: {i}" for i in ids]]
    assert await state_of(host, "assets", asset.id) == "processing"
    assert {await state_of(host, "variants", i) for i in ids} == {"queued"}
    staged = [j for j in await jobs(host, "process_variant") if j["status"] != "discarded"]
    assert [j["args"] for j in staged] == [{"asset_id": asset.id}]  # one render of all four

    await drain(host, redis_url)  # the file is still truncated: the renders fail again
    assert await state_of(host, "assets", asset.id) == "degraded"
    assert {await state_of(host, "variants", i) for i in ids} == {"failed"}


async def test_requeue_one_asset_and_what_it_refuses(cli, host, redis_url):
    asset = await uploaded(host, redis_url, jpeg(160, 120))
    large = (await variants(host, asset.id))["large"]
    (pathlib.Path(host.storages["local"].root) / large["storage_key"]).unlink()
    assert (await cli("verify-storage")).returncode == 0  # large becomes missing
    dry = await cli("requeue", asset.id, "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "requeue (dry run): requeued=1\n")
    assert await state_of(host, "variants", large["id"]) == "missing"
    assert await jobs(host, "process_variant") == []
    live = await cli("requeue", asset.id, "-v")
    assert (live.returncode, live.stdout) == (
        0, f"requeue (live): requeued=1\n  requeued: {large['id']}\n")
    assert [j["args"] for j in await jobs(host, "process_variant")] == [{"asset_id": asset.id}]
    await drain(host, redis_url)
    assert await state_of(host, "variants", large["id"]) == "ready"
    assert await state_of(host, "assets", asset.id) == "ready"

    nowhere = str(uuid.uuid4())
    missing = await cli("requeue", nowhere)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == f"rindle-async: asset {nowhere} does not exist\n"
    ticket = await host.initiate_upload("photos", filename="x.jpg", content_type="image/jpeg",
                                        byte_size=10)
    staged = await cli("requeue", ticket.asset_id)
    assert (staged.returncode, staged.stdout) == (1, "")
    assert staged.stderr == (f"rindle-async: asset {ticket.asset_id} is staged; only assets being "
                             "promoted or with variants can be requeued\n")
    waiting = await host.upload("photos", jpeg(), filename="w.jpg")  # validating: not promoted yet
    promotion = await cli("requeue", waiting.id, "--dry-run")
    assert (promotion.returncode, promotion.stdout) == (0, "requeue (dry run): promotions=1\n")
