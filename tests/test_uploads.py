"""Direct (presigned) and proxied uploads on local storage and S3 (moto), with every
rejection path; all storages are guarded against I/O inside a transaction."""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import msgspec
import pytest

from rindle_async import (
    NotFound,
    TooLarge,
    UploadCompleted,
    UploadStarted,
    ValidationError,
    VerificationFailed,
)
from rindle_async.db.transaction import in_transaction
from rindle_async.storage import Part

from .conftest import drain
from .media import StorageCalledInTransaction, gif, jpeg, png


async def send(storage, ticket, body: bytes) -> None:
    """What a client does with a ticket: PUT the bytes (local: through verify + put)."""
    if storage.adapter == "s3":
        async with httpx.AsyncClient() as client:
            response = await client.request(ticket.method, ticket.url, headers=ticket.headers,
                                            content=body)
        assert response.status_code == 200, response.text
        return
    parts = urlsplit(ticket.url)
    key = unquote(parts.path.split("/rindle/", 1)[1])
    signed = storage.verify(ticket.method, key, dict(parse_qsl(parts.query)))
    assert signed.content_type == ticket.headers["Content-Type"]
    await storage.put(key, body, content_type=signed.content_type, max_bytes=signed.max_bytes)


async def send_parts(rindle, ticket, body: bytes) -> list[Part]:
    """What a multipart client does: PUT each part to a freshly minted URL, keep the ETags."""
    parts = []
    async with httpx.AsyncClient() as client:
        for number in range(1, -(-len(body) // ticket.part_size) + 1):
            request = await rindle.presign_part(ticket.session_id, number)
            chunk = body[(number - 1) * ticket.part_size:number * ticket.part_size]
            response = await client.put(request.url, content=chunk)
            assert response.status_code == 200
            parts.append(Part(part_number=number, etag=response.headers["ETag"]))
    return parts


async def counts(db, schema):
    return {table: await db.fetchval(f"SELECT count(*) FROM {schema}.{table}")
            for table in ("assets", "upload_sessions", "jobs")}


async def jobs(db, schema):
    return [(r["kind"], r["args"]) for r in await db.fetch(
        f"SELECT kind, args::text FROM {schema}.jobs ORDER BY id")]


@pytest.fixture(params=["local", "s3"])
def storage(request, local_storage):
    return local_storage if request.param == "local" else request.getfixturevalue("s3_storage")


async def test_direct_upload_flow(media_rindle, storage, db, schema):
    rindle = await media_rindle(storage)
    events = []
    rindle.subscribe(events.append, UploadStarted, UploadCompleted)
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="../me.png", content_type="image/png",
                                          byte_size=len(body))
    assert ticket.method == "PUT" and ticket.headers == {"Content-Type": "image/png"}
    assert ticket.expires_at <= ticket.session_expires_at
    session = await db.fetchrow(f"SELECT * FROM {schema}.upload_sessions WHERE id = $1::uuid",
                                ticket.session_id)
    assert (session["state"], session["filename"]) == ("signed", "me.png")
    await send(storage, ticket, body)
    asset = await rindle.verify_upload(ticket.session_id)
    assert (asset.id, asset.state, asset.byte_size, asset.filename) == (
        ticket.asset_id, "validating", len(body), "me.png")
    assert await jobs(db, schema) == [("promote_asset", f'{{"asset_id": "{asset.id}"}}')]
    assert [type(e).__name__ for e in events] == ["UploadStarted", "UploadCompleted"]
    assert events[1].byte_size == len(body) and events[1].adapter == "media"
    again = await rindle.verify_upload(ticket.session_id)
    assert again.id == asset.id and len(await jobs(db, schema)) == 1


@pytest.mark.parametrize("abandoned", [False, True], ids=["signed", "abandoned-verifying"])
async def test_racing_verifications_complete_the_session_once(media_rindle, storage, db, schema,
                                                              abandoned):
    rindle = await media_rindle(storage)
    completed = []
    rindle.subscribe(completed.append, UploadCompleted)
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="me.png", content_type="image/png",
                                          byte_size=len(body))
    await send(storage, ticket, body)
    if abandoned:  # a verification that died after claiming the session: the next call takes over
        await db.execute(f"UPDATE {schema}.upload_sessions SET state = 'verifying'"
                         " WHERE id = $1::uuid", ticket.session_id)
    assets = await asyncio.gather(*(rindle.verify_upload(ticket.session_id) for _ in range(8)))
    assert {(a.id, a.state) for a in assets} == {(ticket.asset_id, "validating")}
    assert len(completed) == 1
    assert await jobs(db, schema) == [("promote_asset", f'{{"asset_id": "{ticket.asset_id}"}}')]
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions WHERE id = $1::uuid",
                             ticket.session_id) == "completed"


async def test_sign_upload_gives_a_fresh_working_ticket(media_rindle, storage):
    rindle = await media_rindle(storage)
    body = jpeg()
    first = await rindle.initiate_upload("avatar", filename="a.jpg", content_type="image/jpeg",
                                         byte_size=len(body))
    await asyncio.sleep(1.01)
    second = await rindle.sign_upload(first.session_id)
    # signed anew, never past the session's deadline (so, when the first ticket already ran to
    # that deadline, the second may carry the same expiry and URL)
    assert second.session_id == first.session_id
    assert max(first.expires_at, second.expires_at) <= second.session_expires_at == first.session_expires_at
    await send(storage, second, body)
    assert (await rindle.verify_upload(first.session_id)).state == "validating"


async def test_multipart_upload_on_s3(media_rindle, s3_storage, db, schema):
    rindle = await media_rindle(s3_storage, max_bytes=20 * 1024 * 1024)
    body = png() + bytes(6 * 1024 * 1024)  # bytes past the PNG's end do not matter to verify
    ticket = await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                          byte_size=len(body), multipart=True,
                                          part_size=5 * 1024 * 1024)
    assert ticket.url is None and ticket.upload_id and ticket.part_size == 5 * 1024 * 1024
    parts = await send_parts(rindle, ticket, body)
    with pytest.raises(ValidationError, match="part_number=10001 is outside S3's 1..10000"):
        await rindle.presign_part(ticket.session_id, 10_001)
    with pytest.raises(ValidationError, match="pass parts="):
        await rindle.verify_upload(ticket.session_id)
    asset = await rindle.verify_upload(ticket.session_id, parts=parts)
    assert (asset.state, asset.byte_size) == ("validating", len(body))
    info = await s3_storage.head(await db.fetchval(
        f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid", asset.id))
    assert info.size == len(body)


async def multipart_session(rindle, size: int = 6 * 1024 * 1024):
    return await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                        byte_size=size, multipart=True, part_size=5 * 1024 * 1024)


GOOD = [Part(part_number=1, etag='"a"'), Part(part_number=2, etag='"b"')]


@pytest.mark.parametrize("parts, message", [
    ([GOOD[0], GOOD[0]], "part_number 1 is listed twice"),
    ([GOOD[0], Part(part_number=10_001, etag='"c"')], r"parts\[1\].part_number=10001 is outside S3's 1..10000"),
    ([Part(part_number=0, etag='"z"'), GOOD[1]], r"parts\[0\].part_number=0 is outside S3's 1..10000"),
    ([GOOD[0], Part(part_number="2", etag='"b"')], r"parts\[1\].part_number='2' is outside S3's"),
    ([GOOD[0], Part(part_number=2, etag="")], r"parts\[1\].etag='' is not the ETag"),
    ([GOOD[0], Part(part_number=2, etag='""')], r"parts\[1\].etag='\"\"' is not the ETag"),
    ([GOOD[0], Part(part_number=2, etag=None)], r"parts\[1\].etag=None is not the ETag"),
    ([GOOD[0], Part(part_number=2, etag="e" * 2000)], r"parts\[1\].etag='eeee.*' is not the ETag"),
    ([GOOD[0], {"PartNumber": 2, "ETag": '"b"'}], r"parts\[1\] is a dict, not a Part"),
])
async def test_a_bad_part_list_is_refused_before_storage_and_the_session_stays_open(
        media_rindle, s3_storage, db, schema, parts, message):
    rindle = await media_rindle(s3_storage, max_bytes=20 * 1024 * 1024)
    ticket = await multipart_session(rindle)
    with pytest.raises(ValidationError, match=message):
        await rindle.verify_upload(ticket.session_id, parts=parts)
    assert s3_storage.calls["complete_multipart"] == s3_storage.calls["head"] == 0
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "signed"


async def test_after_a_bad_part_list_the_right_one_verifies(media_rindle, s3_storage):
    rindle = await media_rindle(s3_storage, max_bytes=20 * 1024 * 1024)
    body = png() + bytes(6 * 1024 * 1024)
    ticket = await multipart_session(rindle, len(body))
    parts = await send_parts(rindle, ticket, body)
    with pytest.raises(ValidationError, match="part_number 2 is listed twice"):
        await rindle.verify_upload(ticket.session_id, parts=[parts[1], parts[1]])
    asset = await rindle.verify_upload(ticket.session_id, parts=list(reversed(parts)))  # any order
    assert (asset.state, asset.byte_size) == ("validating", len(body))


async def test_a_storage_error_completing_the_parts_leaves_the_session_open(media_rindle, s3_storage,
                                                                         db, schema):
    from rindle_async import StorageError

    class CompleteFailsOnce(type(s3_storage)):
        failed = False

        async def complete_multipart(self, key, upload_id, parts):
            if not CompleteFailsOnce.failed:
                CompleteFailsOnce.failed = True
                raise StorageError("complete_multipart timed out")
            return await self._inner.complete_multipart(key, upload_id, parts)

    storage = CompleteFailsOnce(s3_storage._inner)
    rindle = await media_rindle(storage, max_bytes=20 * 1024 * 1024)
    body = png() + bytes(6 * 1024 * 1024)
    ticket = await multipart_session(rindle, len(body))
    parts = await send_parts(rindle, ticket, body)
    with pytest.raises(StorageError, match="complete_multipart timed out"):
        await rindle.verify_upload(ticket.session_id, parts=parts)
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "signed"
    asset = await rindle.verify_upload(ticket.session_id, parts=parts)
    assert (asset.state, asset.byte_size) == ("validating", len(body))


async def test_multipart_is_refused_on_local_storage(media_rindle):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match="cannot do multipart uploads"):
        await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                     byte_size=10, multipart=True)


@pytest.mark.parametrize("content_type, byte_size, error, message", [
    ("image/gif", 100, ValidationError, "'image/gif' is not allowed for profile avatar"),
    (None, 100, ValidationError, "content type is missing"),
    ("image/png", 11 * 1024 * 1024, TooLarge, "byte_size 11534336 is over the 10485760-byte limit"),
    ("image/png", 0, ValidationError, "byte_size=0 must be a positive int"),
])
async def test_initiate_refuses_what_the_profile_forbids(media_rindle, db, schema, content_type,
                                                         byte_size, error, message):
    rindle = await media_rindle()
    with pytest.raises(error, match=message):
        await rindle.initiate_upload("avatar", filename="a", content_type=content_type,
                                     byte_size=byte_size)
    assert await counts(db, schema) == {"assets": 0, "upload_sessions": 0, "jobs": 0}


@pytest.mark.parametrize("filename, content_type", [
    ("photo.png", "image/jpeg"), ("photo.JPG", "image/png"), ("photo\uff0ejpg", "image/png")])
async def test_initiate_refuses_a_declared_type_the_filename_contradicts(media_rindle, db, schema,
                                                                        filename, content_type):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match=f"says image/.* but the declared type is {content_type}"):
        await rindle.initiate_upload("avatar", filename=filename, content_type=content_type,
                                     byte_size=100)
    assert await counts(db, schema) == {"assets": 0, "upload_sessions": 0, "jobs": 0}


async def test_promotion_quarantines_bytes_the_stored_filename_contradicts(media_rindle, db, schema,
                                                                          redis_url):
    rindle = await media_rindle()
    body = jpeg()
    ticket = await rindle.initiate_upload("avatar", filename="photo.jpg", content_type="image/jpeg",
                                          byte_size=len(body))
    # a session opened before initiate_upload compared the filename with the declared type
    await db.execute(f"UPDATE {schema}.assets SET filename = 'photo.png'")
    await send(rindle.storages["media"], ticket, body)
    await rindle.verify_upload(ticket.session_id)
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(ticket.asset_id)
    assert (asset.state, asset.reason) == (
        "quarantined", "filename 'photo.png' says image/png but the bytes are image/jpeg")


async def test_initiate_refuses_unknown_profiles_and_bad_checksums(media_rindle):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match="unknown profile 'banner'; configured profiles: avatar"):
        await rindle.initiate_upload("banner", filename="a.png", content_type="image/png", byte_size=1)
    with pytest.raises(ValidationError, match="checksum 'crc:1' is not 'md5:<32 hex digits>'"):
        await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                     byte_size=1, checksum="crc:1")


async def test_a_size_that_differs_from_the_declared_one_fails_verification(media_rindle, storage,
                                                                          db, schema):
    rindle = await media_rindle(storage)
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(body) + 5)
    if storage.adapter == "s3":  # S3 itself would refuse a body shorter than the signed length
        key = await db.fetchval(f"SELECT storage_key FROM {schema}.assets WHERE id = $1::uuid",
                                ticket.asset_id)
        await storage.put(key, body, content_type="image/png")
    else:
        await send(storage, ticket, body)
    with pytest.raises(VerificationFailed, match=f"has {len(body)} bytes but {len(body) + 5} were declared"):
        await rindle.verify_upload(ticket.session_id)
    session = await db.fetchrow(f"SELECT state, reason FROM {schema}.upload_sessions")
    assert session["state"] == "failed" and "were declared" in session["reason"]
    asset = await rindle.get_asset(ticket.asset_id)
    assert asset.state == "quarantined" and asset.reason.startswith("upload verification failed")
    assert await jobs(db, schema) == []
    with pytest.raises(ValidationError, match="is failed .* cannot verify it; start a new upload"):
        await rindle.verify_upload(ticket.session_id)


async def test_a_missing_object_leaves_the_session_open(media_rindle, storage, db, schema):
    rindle = await media_rindle(storage)
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(body))
    with pytest.raises(VerificationFailed, match="nothing is stored at the ticket's URL yet"):
        await rindle.verify_upload(ticket.session_id)
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "signed"
    await send(storage, ticket, body)
    assert (await rindle.verify_upload(ticket.session_id)).state == "validating"


async def test_an_expired_session_is_closed_and_its_asset_purged(media_rindle, db, schema):
    rindle = await media_rindle()
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(body))
    await db.execute(f"UPDATE {schema}.upload_sessions SET expires_at = now() - interval '1 second'")
    with pytest.raises(VerificationFailed, match="expired at"):
        await rindle.verify_upload(ticket.session_id)
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "expired"
    assert (await rindle.get_asset(ticket.asset_id)).state == "deleted"
    assert await jobs(db, schema) == [("purge_storage", f'{{"asset_id": "{ticket.asset_id}"}}')]
    with pytest.raises(ValidationError, match="is expired"):
        await rindle.sign_upload(ticket.session_id)


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
async def test_checksums(media_rindle, storage, db, schema, algorithm):
    rindle = await media_rindle(storage)
    body = png()
    good = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(body), checksum=good.upper().replace(
                                              algorithm.upper(), algorithm))
    await send(storage, ticket, body)
    assert (await rindle.verify_upload(ticket.session_id)).state == "validating"
    wrong = f"{algorithm}:{hashlib.new(algorithm, b'other').hexdigest()}"
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=len(body), checksum=wrong)
    await send(storage, ticket, body)
    with pytest.raises(VerificationFailed, match=f"checksum mismatch: declared {wrong}"):
        await rindle.verify_upload(ticket.session_id)


def same_size_other_bytes(body: bytes) -> bytes:
    """Another valid JPEG (8x8) of the same size as ``body``, padded with a comment segment."""
    other = jpeg(8, 8)
    gap = len(body) - len(other)
    assert 4 <= gap < 65_000
    return other[:2] + b"\xff\xfe" + (gap - 2).to_bytes(2, "big") + b"x" * (gap - 4) + other[2:]


@pytest.mark.parametrize("with_checksum", [False, True])
async def test_bytes_swapped_after_verification_are_quarantined(media_rindle, storage, db, schema,
                                                                redis_url, with_checksum):
    rindle = await media_rindle(storage)
    body = jpeg()
    swapped = same_size_other_bytes(body)
    checksum = "sha256:" + hashlib.sha256(body).hexdigest() if with_checksum else None
    ticket = await rindle.initiate_upload("avatar", filename="a.jpg", content_type="image/jpeg",
                                          byte_size=len(body), checksum=checksum)
    await send(storage, ticket, body)
    await rindle.verify_upload(ticket.session_id)
    # S3 cannot revoke the presigned PUT; locally, a PUT that passed the routes' session check
    # before verify_upload claimed the session can still finish after it
    await send(storage, ticket, swapped)
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(ticket.asset_id)
    assert asset.state == "quarantined", asset
    assert asset.reason.startswith("the object changed after verification")
    assert asset.variants == {}


async def test_a_swap_is_caught_by_the_verified_sha256_where_the_store_gives_no_etag(
        media_rindle, local_storage, db, schema, redis_url):
    class NoETags(type(local_storage)):
        """A store whose HEAD carries no ETag: only the bytes' sha256 can tell."""

        async def head(self, key):
            info = await self._inner.head(key)
            return info and msgspec.structs.replace(info, etag=None)

    storage = NoETags(local_storage._inner)
    rindle = await media_rindle(storage)
    body = jpeg()
    ticket = await rindle.initiate_upload("avatar", filename="a.jpg", content_type="image/jpeg",
                                          byte_size=len(body),
                                          checksum="md5:" + hashlib.md5(body).hexdigest())
    await send(storage, ticket, body)
    await rindle.verify_upload(ticket.session_id)
    await send(storage, ticket, same_size_other_bytes(body))
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(ticket.asset_id)
    assert asset.state == "quarantined"
    assert asset.reason == (f"the object changed after verification: its sha256 is "
                            f"{hashlib.sha256(same_size_other_bytes(body)).hexdigest()}, verify_upload "
                            f"read {hashlib.sha256(body).hexdigest()}")


async def test_abort_upload(media_rindle, storage, db, schema):
    rindle = await media_rindle(storage)
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          byte_size=10)
    await rindle.abort_upload(ticket.session_id)
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "aborted"
    assert (await rindle.get_asset(ticket.asset_id)).state == "deleted"
    with pytest.raises(ValidationError, match="only open sessions can be aborted"):
        await rindle.abort_upload(ticket.session_id)


async def test_unknown_and_malformed_sessions(media_rindle):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match="session_id 'nope' is not a UUID"):
        await rindle.verify_upload("nope")
    with pytest.raises(NotFound, match="upload session 00000000-0000-0000-0000-000000000000 does not exist"):
        await rindle.verify_upload("00000000-0000-0000-0000-000000000000")


# -- proxied -------------------------------------------------------------------------------


async def _aiter(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i:i + size]


@pytest.mark.parametrize("source", ["bytes", "path", "iterator"])
async def test_proxied_upload_from_each_source(media_rindle, storage, db, schema, tmp_path, source):
    rindle = await media_rindle(storage)
    body = jpeg(300, 200)
    data = {"bytes": lambda: body, "iterator": lambda: _aiter(body),
            "path": lambda: (tmp_path / "in.jpg").write_bytes(body) and tmp_path / "in.jpg"}[source]()
    events = []
    rindle.subscribe(events.append, UploadCompleted)
    asset = await rindle.upload("avatar", data, filename="holiday.jpg")
    assert (asset.state, asset.content_type, asset.byte_size, asset.filename) == (
        "validating", "image/jpeg", len(body), "holiday.jpg")
    key = await db.fetchval(f"SELECT storage_key FROM {schema}.assets")
    assert key.endswith("/original.jpg") and asset.id in key
    assert b"".join([c async for c in storage.get(key)]) == body
    assert await jobs(db, schema) == [("promote_asset", f'{{"asset_id": "{asset.id}"}}')]
    assert events[0].session_id is None and events[0].asset_id == asset.id


@pytest.mark.parametrize("data, filename, error, message", [
    (gif(), "a.gif", ValidationError, "bytes are image/gif, which profile 'avatar' does not allow"),
    (b"plain text, not an image" * 10, "a.png", ValidationError, "of an unknown type|text/plain"),
    (png(), "photo.jpg", ValidationError, "filename 'photo.jpg' says image/jpeg but the bytes are image/png"),
    (b"", "a.png", ValidationError, "the upload is empty"),
])
async def test_proxied_upload_refusals_store_nothing(media_rindle, storage, db, schema, data,
                                                     filename, error, message):
    rindle = await media_rindle(storage)
    with pytest.raises(error, match=message):
        await rindle.upload("avatar", data, filename=filename)
    assert await counts(db, schema) == {"assets": 0, "upload_sessions": 0, "jobs": 0}
    assert [o async for o in storage.list("")] == []


async def test_proxied_upload_over_the_limit_while_streaming(media_rindle, storage, db, schema):
    rindle = await media_rindle(storage, max_bytes=50_000)
    body = png() + bytes(60_000)
    with pytest.raises(TooLarge, match="over the 50000-byte limit of profile 'avatar'"):
        await rindle.upload("avatar", _aiter(body, 4096), filename="a.png")
    assert await counts(db, schema) == {"assets": 0, "upload_sessions": 0, "jobs": 0}
    assert [o async for o in storage.list("")] == []


async def test_proxied_upload_refuses_a_declared_type_early(media_rindle):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match="'image/gif' is not allowed"):
        await rindle.upload("avatar", png(), content_type="image/gif")


@pytest.mark.parametrize("declared", ["image/jpeg", "IMAGE/JPEG; q=1"])
async def test_proxied_upload_refuses_a_declared_type_the_bytes_contradict(media_rindle, storage, db,
                                                                          schema, declared):
    rindle = await media_rindle(storage)
    with pytest.raises(ValidationError, match="declared image/jpeg but the bytes are image/png"):
        await rindle.upload("avatar", png(), filename="a", content_type=declared)
    assert await counts(db, schema) == {"assets": 0, "upload_sessions": 0, "jobs": 0}
    assert [o async for o in storage.list("")] == []


async def test_the_guard_catches_storage_calls_inside_a_transaction(media_rindle, local_storage):
    rindle = await media_rindle()
    async with rindle.transaction():
        assert in_transaction()
        with pytest.raises(StorageCalledInTransaction, match="storage.head was called inside"):
            await local_storage.head("x")
    assert not in_transaction()
    assert await local_storage.head("x") is None


async def test_a_multipart_verify_that_fails_midway_can_be_retried(media_rindle, s3_storage, db,
                                                                   schema):
    from rindle_async import StorageError

    class HeadFailsOnce(type(s3_storage)):
        failed = False

        async def head(self, key):
            if not HeadFailsOnce.failed:
                HeadFailsOnce.failed = True
                raise StorageError("head timed out")
            return await self._inner.head(key)

    storage = HeadFailsOnce(s3_storage._inner)
    rindle = await media_rindle(storage, max_bytes=20 * 1024 * 1024)
    body = png() + bytes(5 * 1024 * 1024)
    ticket = await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                          byte_size=len(body), multipart=True,
                                          part_size=5 * 1024 * 1024)
    parts = await send_parts(rindle, ticket, body)
    with pytest.raises(StorageError, match="head timed out"):
        await rindle.verify_upload(ticket.session_id, parts=parts)
    assert await db.fetchval(f"SELECT state FROM {schema}.upload_sessions") == "signed"
    asset = await rindle.verify_upload(ticket.session_id, parts=parts)  # the retry completes it
    assert (asset.state, asset.byte_size) == ("validating", len(body))


# -- client-chosen parts, no declared size, reading sessions back --------------------------

async def put_parts(rindle, session_id: str, body: bytes, part_size: int) -> list[Part]:
    """A client with its own part size (Uppy's 5 MiB), whatever the session suggested."""
    parts = []
    async with httpx.AsyncClient() as client:
        for number, start in enumerate(range(0, len(body), part_size), 1):
            request = await rindle.presign_part(session_id, number)
            response = await client.put(request.url, content=body[start:start + part_size])
            assert response.status_code == 200, response.text
            parts.append(Part(part_number=number, etag=response.headers["ETag"]))
    return parts


async def test_multipart_without_a_size_in_the_clients_own_parts(media_rindle, s3_storage, db, schema):
    rindle = await media_rindle(s3_storage, max_bytes=20 * 1024 * 1024)
    body = png() + bytes(11 * 1024 * 1024)
    ticket = await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                          multipart=True)
    assert ticket.part_size == 8 * 1024 * 1024 and ticket.storage_key
    parts = await put_parts(rindle, ticket.session_id, body, 5 * 1024 * 1024)  # 3 parts, not 2
    stored = await rindle.list_parts(ticket.session_id)
    assert [(p.part_number, p.size) for p in stored] == [(1, 5 << 20), (2, 5 << 20), (3, len(body) - (10 << 20))]
    assert [f'"{p.etag}"' for p in stored] == [p.etag for p in parts]
    session = await rindle.get_upload(ticket.session_id)
    assert (session.state, session.strategy, session.byte_size, session.upload_id) == (
        "signed", "multipart", None, ticket.upload_id)
    assert session.parts == stored and session.storage_key == ticket.storage_key
    assert await rindle.find_upload(ticket.storage_key, profile="avatar") == session
    asset = await rindle.verify_upload(ticket.session_id, parts=parts)
    assert (asset.state, asset.byte_size) == ("validating", len(body))
    done = await rindle.get_upload(ticket.session_id)
    assert (done.state, done.parts) == ("completed", None)
    with pytest.raises(ValidationError, match="is completed; its parts are no longer listed"):
        await rindle.list_parts(ticket.session_id)


async def test_multipart_over_max_bytes_fails_at_completion(media_rindle, s3_storage, db, schema):
    rindle = await media_rindle(s3_storage, max_bytes=6 * 1024 * 1024)
    ticket = await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                          multipart=True)
    parts = await put_parts(rindle, ticket.session_id, png() + bytes(7 * 1024 * 1024), 5 * 1024 * 1024)
    with pytest.raises(VerificationFailed, match="over the 6291456-byte limit"):
        await rindle.verify_upload(ticket.session_id, parts=parts)
    assert (await rindle.get_upload(ticket.session_id)).state == "failed"
    assert (await rindle.get_asset(ticket.asset_id)).state == "quarantined"


async def test_a_part_under_s3s_minimum_is_refused_and_the_session_stays_open(media_rindle, s3_storage):
    rindle = await media_rindle(s3_storage, max_bytes=20 * 1024 * 1024)
    ticket = await rindle.initiate_upload("avatar", filename="big.png", content_type="image/png",
                                          multipart=True)
    body = png() + bytes(6 * 1024 * 1024)
    small = await put_parts(rindle, ticket.session_id, body, 4 * 1024 * 1024)
    with pytest.raises(ValidationError, match="EntityTooSmall"):
        await rindle.verify_upload(ticket.session_id, parts=small)
    assert (await rindle.get_upload(ticket.session_id)).state == "signed"
    parts = await put_parts(rindle, ticket.session_id, body, 5 * 1024 * 1024)
    assert (await rindle.verify_upload(ticket.session_id, parts=parts)).byte_size == len(body)


@pytest.mark.parametrize("options, error, message", [
    ({}, ValidationError, "byte_size is required for a presigned PUT"),
    ({"multipart": True, "part_size": 4 * 1024 * 1024}, ValidationError, "outside S3's 5242880..5368709120"),
    ({"multipart": True, "part_size": 6 * 1024 ** 3}, ValidationError, "outside S3's 5242880..5368709120"),
    ({"multipart": True, "presigned_post": True}, ValidationError, "exclude each other"),
    ({"presigned_post": True, "byte_size": 11 * 1024 * 1024}, TooLarge, "over the 10485760-byte limit"),
])
async def test_initiate_refuses_bad_strategies_and_sizes(media_rindle, s3_storage, db, schema, options,
                                                         error, message):
    rindle = await media_rindle(s3_storage)
    with pytest.raises(error, match=message):
        await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png", **options)
    assert (await counts(db, schema))["upload_sessions"] == 0


async def test_presigned_post_upload(media_rindle, s3_storage, db, schema):
    rindle = await media_rindle(s3_storage)
    body = png()
    ticket = await rindle.initiate_upload("avatar", filename="me.png", content_type="image/png",
                                          presigned_post=True)
    assert ticket.method == "POST" and ticket.fields["key"] == ticket.storage_key
    assert ticket.fields["Content-Type"] == "image/png" and "policy" in ticket.fields
    async with httpx.AsyncClient() as client:
        response = await client.post(ticket.url, data=ticket.fields, files={"file": ("me.png", body)})
    assert response.status_code in (200, 204), response.text
    session = await rindle.find_upload(ticket.storage_key, profile="avatar")
    assert (session.id, session.strategy, session.byte_size) == (ticket.session_id, "presigned_post", None)
    asset = await rindle.verify_upload(ticket.session_id)
    assert (asset.state, asset.byte_size) == ("validating", len(body))


async def test_sign_upload_renews_a_post_policy(media_rindle, s3_storage):
    rindle = await media_rindle(s3_storage)
    ticket = await rindle.initiate_upload("avatar", filename="me.png", content_type="image/png",
                                          presigned_post=True)
    fresh = await rindle.sign_upload(ticket.session_id)
    assert fresh.method == "POST" and fresh.fields["key"] == ticket.storage_key


async def test_post_and_list_parts_are_refused_where_the_store_cannot(media_rindle):
    rindle = await media_rindle()
    with pytest.raises(ValidationError, match="cannot do presigned POST uploads"):
        await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                     presigned_post=True)
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png", byte_size=5)
    with pytest.raises(ValidationError, match="is presigned_put, not multipart"):
        await rindle.list_parts(ticket.session_id)
    assert (await rindle.get_upload(ticket.session_id)).parts is None
    with pytest.raises(NotFound, match="no upload session of profile 'avatar' writes 'avatar/nope'"):
        await rindle.find_upload("avatar/nope", profile="avatar")


async def test_abort_where_the_store_cannot_abort_still_closes_the_session(media_rindle, s3_storage, db,
                                                                          schema, caplog):
    from rindle_async import Unsupported

    class NoAbort(type(s3_storage)):  # what s3rver does: no AbortMultipartUpload
        async def abort_multipart(self, key, upload_id):
            raise Unsupported("the S3 endpoint does not implement abort multipart (NotImplemented)")

    rindle = await media_rindle(NoAbort(s3_storage._inner))
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png",
                                          multipart=True)
    await rindle.abort_upload(ticket.session_id)
    assert (await rindle.get_upload(ticket.session_id)).state == "aborted"
    assert (await rindle.get_asset(ticket.asset_id)).state == "deleted"
    assert "cleanup-orphans retries it" in caplog.text


async def test_the_owner_is_kept_on_the_session(media_rindle, db, schema):
    rindle = await media_rindle()
    ticket = await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png", byte_size=5,
                                          owner="user:42")
    assert (await rindle.get_upload(ticket.session_id)).owner == "user:42"
    with pytest.raises(ValidationError, match="owner=42 must be a str"):
        await rindle.initiate_upload("avatar", filename="a.png", content_type="image/png", byte_size=5,
                                     owner=42)
