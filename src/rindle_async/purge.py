"""The purge of tombstoned assets: storage first, rows after storage confirms.

Detach marks an asset ``deleted`` and stages ``purge_storage`` in the same
transaction.  The job deletes every object under the asset's key prefix (the
original, each variant of every recipe, leftovers of interrupted renders; a
missing object counts as deleted), aborts unfinished multipart uploads, and
only then drops the rows.  A storage failure raises, so the job is retried and
the tombstone stays until the objects are really gone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .db import assets
from .errors import Unsupported
from .lifecycle import transitions
from .lifecycle.machines import VARIANT

if TYPE_CHECKING:
    from .ledger.runner import JobRun

log = logging.getLogger("rindle_async.purge")


def asset_prefix(storage_key: str) -> str:
    """The key prefix that holds every object of the asset whose original is ``storage_key``."""
    return storage_key.rsplit("/", 1)[0] + "/"


async def purge_storage(job: JobRun) -> None:
    """Delete a tombstoned asset's objects, then its rows; leave live assets alone.

    job: the running ledger job; ``job.args.asset_id`` names the asset.
    """
    rt, schema = job.runtime, job.runtime.schema
    asset_id = job.args.asset_id
    row = await rt.pool.fetchrow(
        f"SELECT a.state, a.storage, a.storage_key, EXISTS (SELECT 1 FROM {schema}.attachments t"
        f" WHERE t.asset_id = a.id) AS held FROM {schema}.assets a WHERE a.id = $1", asset_id)
    if row is None:
        return  # purged already
    if row["state"] != "deleted" or row["held"]:
        log.info("purge_storage: asset %s is %s%s; left alone", asset_id, row["state"],
                 " and attached" if row["held"] else "")
        return
    storage = rt.storages[row["storage"]]
    keys = {row["storage_key"]}
    keys.update(r["storage_key"] for r in await rt.pool.fetch(
        f"SELECT storage_key FROM {schema}.variants WHERE asset_id = $1 AND storage_key IS NOT NULL",
        asset_id))
    prefix = asset_prefix(row["storage_key"])
    keys.update([info.key async for info in storage.list(prefix)])
    for key in sorted(keys):
        await storage.delete(key)
    for session in await rt.pool.fetch(
            f"SELECT storage_key, multipart_upload_id FROM {schema}.upload_sessions"
            " WHERE asset_id = $1 AND multipart_upload_id IS NOT NULL AND state <> 'completed'",
            asset_id):
        try:
            await storage.abort_multipart(session["storage_key"], session["multipart_upload_id"])
        except Unsupported as exc:  # s3rver has no AbortMultipartUpload: a retry cannot help
            log.warning("purge of asset %s left multipart upload %s: %s", asset_id,
                        session["multipart_upload_id"], exc)
    async with job.complete() as uow:
        if await assets.lock_state(uow.conn, schema, asset_id) != "deleted":
            return
        for variant in await uow.conn.fetch(
                f"SELECT id, state FROM {schema}.variants WHERE asset_id = $1 AND state <> 'purged'",
                asset_id):
            await transitions.transition(uow, VARIANT, variant["id"], variant["state"], "purged")
        await uow.conn.execute(f"DELETE FROM {schema}.assets WHERE id = $1", asset_id)
    log.info("purge_storage: asset %s purged (%d objects)", asset_id, len(keys))
