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

from .db import assets, sessions, variants
from .db.assets import PurgeView
from .errors import Unsupported
from .lifecycle import transitions
from .lifecycle.machines import VARIANT
from .storage import keys

if TYPE_CHECKING:
    from .ledger.runner import JobRun
    from .runtime import Runtime

log = logging.getLogger("rindle_async.purge")


async def purge_storage(job: JobRun) -> None:
    """Delete a tombstoned asset's objects, then its rows; leave live assets alone.

    job: the running ledger job; ``job.args.asset_id`` names the asset.
    """
    rt, schema = job.runtime, job.runtime.schema
    asset_id = job.args.asset_id
    asset = await assets.purge_view(rt.pool, schema, asset_id)
    if asset is None:
        return  # purged already
    if asset.state != "deleted" or asset.held:
        log.info("purge_storage: asset %s is %s%s; left alone", asset_id, asset.state,
                 " and attached" if asset.held else "")
        return
    deleted = await _delete_objects(rt, asset)
    async with job.complete() as uow:
        if await assets.lock_state(uow.conn, schema, asset_id) != "deleted":
            return
        unpurged = sorted(VARIANT.states - {"purged"})
        for variant_id, state in (await variants.lock_in_states(uow.conn, schema, asset_id, unpurged)).items():
            await transitions.transition(uow, VARIANT, variant_id, state, "purged")
        await assets.delete(uow.conn, schema, asset_id)
    log.info("purge_storage: asset %s purged (%d objects)", asset_id, deleted)


async def _delete_objects(rt: Runtime, asset: PurgeView) -> int:
    """Delete every object of the asset (its rows' keys and all under its prefix) and abort its
    unfinished multipart uploads; return how many keys were deleted."""
    storage = rt.storages[asset.storage]
    doomed = {asset.storage_key, *await variants.stored_keys(rt.pool, rt.schema, asset.id)}
    doomed.update([info.key async for info in storage.list(keys.asset_prefix(asset.storage_key))])
    for key in sorted(doomed):
        await storage.delete(key)
    for key, upload_id in await sessions.unfinished_multipart(rt.pool, rt.schema, asset.id):
        try:
            await storage.abort_multipart(key, upload_id)
        except Unsupported as exc:  # s3rver has no AbortMultipartUpload: a retry cannot help
            log.warning("purge of asset %s left multipart upload %s: %s", asset.id, upload_id, exc)
    return len(doomed)
