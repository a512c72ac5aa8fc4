"""Owner erasure over a mix of owners: what only the erased record held is purged from rows and
storage once the purges run, shared assets and other owners stay, a dry run plans exactly what a
live run does, and the CLI erases a batch (a dry run unless --live) and resumes by re-running."""

from __future__ import annotations

import pathlib

import pytest

from rindle_async import NotFound, OwnerErased, ValidationError

from .conftest import drain
from .media import jpeg, png, stored_files
from .test_cli import cli, lines, uploaded  # noqa: F401  (cli is a fixture)


async def asset_files(storage, asset_id: str) -> list[str]:
    return [str(p) for p in stored_files(storage.root) if asset_id in str(p)]


async def test_erasure_purges_what_only_the_owner_held_and_keeps_what_others_hold(
        media_rindle, local_storage, redis_url):
    rindle = await media_rindle()
    own_avatar, own_cover, shared, others = [
        await rindle.upload("avatar", data) for data in (jpeg(80, 60), png(), jpeg(60, 40), jpeg(50, 50))]
    await drain(rindle, redis_url)
    await rindle.attach(own_avatar.id, owner_type="user", owner_id=1, slot="avatar")
    await rindle.attach(own_cover.id, owner_type="user", owner_id=1, slot="cover")
    await rindle.attach(shared.id, owner_type="user", owner_id=1, slot="banner")
    await rindle.attach(shared.id, owner_type="team", owner_id=1, slot="logo")  # same id, other type
    await rindle.attach(others.id, owner_type="user", owner_id=2, slot="avatar")
    assert await asset_files(local_storage, own_avatar.id)
    seen: list[OwnerErased] = []
    rindle.subscribe(seen.append, OwnerErased)

    plan = await rindle.erase_owner("user", 1, dry_run=True)
    assert await rindle.attachment("user", 1, "avatar") is not None and not seen  # nothing changed
    done = await rindle.erase_owner("user", 1)
    assert (plan.counts, plan.items) == (done.counts, done.items)
    assert done.counts == {"attachments_detached": 3, "assets_erased": 2, "assets_retained": 1}
    assert sorted(done.items["assets_erased"]) == sorted([own_avatar.id, own_cover.id])
    assert done.items["assets_retained"] == [shared.id]
    assert done.items["attachments_detached"] == ["user:1:avatar", "user:1:banner", "user:1:cover"]
    assert [(e.owner_type, e.owner_id, e.slots, e.assets_erased, e.assets_retained) for e in seen] == [
        ("user", "1", 3, 2, 1)]

    await drain(rindle, redis_url)  # the purges run
    for gone in (own_avatar, own_cover):
        with pytest.raises(NotFound):
            await rindle.get_asset(gone.id)
        assert await asset_files(local_storage, gone.id) == []
    assert await rindle.attachments("user", [1], "avatar") == {}
    assert not await rindle.runtime.pool.fetchval(
        f"SELECT count(*) FROM {rindle.schema}.attachments WHERE owner_type = 'user' AND owner_id = '1'")
    for kept in (shared, others):
        assert (await rindle.get_asset(kept.id)).state == "ready"
        assert await rindle.url(kept.id, variant="thumb")
    assert (await rindle.attachment("team", 1, "logo")).asset_id == shared.id

    again = await rindle.erase_owner("user", 1)  # erased already: nothing to do, and on record
    assert again.counts == {} and (seen[-1].slots, seen[-1].assets_erased, len(seen)) == (0, 0, 2)
    with pytest.raises(ValidationError, match="owner_type"):
        await rindle.erase_owner("", 1)


async def test_erasure_joins_the_hosts_transaction_and_rolls_back_with_it(media_rindle, redis_url):
    rindle = await media_rindle()
    asset = await rindle.upload("avatar", jpeg(40, 30))
    await drain(rindle, redis_url)
    await rindle.attach(asset.id, owner_type="user", owner_id=7, slot="avatar")
    with pytest.raises(RuntimeError):
        async with rindle.transaction() as conn:
            await rindle.erase_owner("user", 7, conn=conn)
            raise RuntimeError("the host's own delete failed")
    assert (await rindle.attachment("user", 7, "avatar")).asset_id == asset.id
    assert (await rindle.get_asset(asset.id)).state == "ready"
    async with rindle.transaction() as conn:
        await rindle.erase_owner("user", 7, conn=conn)
    assert (await rindle.get_asset(asset.id)).state == "deleted"


async def test_cli_erases_owners_from_arguments_and_a_file_and_resumes(cli, host, redis_url, tmp_path):
    photos = [await uploaded(host, redis_url, jpeg(60 + n, 40)) for n in range(3)]
    for n, photo in enumerate(photos):
        await host.attach(photo.id, owner_type="user", owner_id=n, slot="avatar")
    owners = pathlib.Path(tmp_path, "owners.txt")
    owners.write_text("# users who asked to be forgotten\nuser:1\n\nuser:2\n")

    dry = await cli("erase-owners", "user:0", "--owners-file", str(owners))
    assert (dry.returncode, lines(dry.stdout)) == (0, [
        "erase_owners (dry run): assets_erased=3, attachments_detached=3, owners=3",
        "dry run: nothing was changed; run again with --live to erase"]), dry.stderr
    assert [(await host.get_asset(p.id)).state for p in photos] == ["ready"] * 3

    first = await cli("erase-owners", "--live", "user:0")  # a batch cut short after one owner
    assert (first.returncode, first.stdout) == (
        0, "erase_owners (live): assets_erased=1, attachments_detached=1, owners=1\n"), first.stderr
    resumed = await cli("erase-owners", "--live", "-v", "user:0", "--owners-file", str(owners))
    assert resumed.returncode == 0, resumed.stderr
    assert lines(resumed.stdout) == [
        "erase_owners (live): assets_erased=2, attachments_detached=2, owners=3",
        *(f"  assets_erased: {p.id}" for p in photos[1:]),  # in the owners' order
        "  attachments_detached: user:1:avatar", "  attachments_detached: user:2:avatar"]
    await drain(host, redis_url)
    assert not await host.runtime.pool.fetchval(f"SELECT count(*) FROM {host.schema}.assets")

    bad = await cli("erase-owners", "user-without-id")
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "rindle-async: owner 'user-without-id' is not TYPE:ID (e.g. user:42)")
    none = await cli("erase-owners")
    assert none.returncode == 1 and "name the owners to erase" in none.stderr
