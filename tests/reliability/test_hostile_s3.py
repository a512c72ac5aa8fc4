"""The S3 half of the hostile corpus: direct uploads' presigned PUTs abused against SeaweedFS,
which checks SigV4 signatures and expiry as S3 does (moto checks nothing).

Each case ends in a 403 from the store (and an upload that can still be finished), a
verification that fails naming what was wrong, or a quarantine with its reason; a replay
after promotion never reaches the promoted asset, and cleanup removes what it wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from rindle_async import S3Storage, VerificationFailed, maintenance

from ..conftest import drain
from ..media import jpeg, png
from ..s3server import SeaweedS3, seaweedfs  # noqa: F401  (fixture)


@pytest.fixture
async def seaweed(seaweedfs: SeaweedS3, s3_bucket) -> AsyncIterator[S3Storage]:  # noqa: F811
    storage = S3Storage(bucket=f"hostile-{s3_bucket}"[:63], endpoint_url=seaweedfs.endpoint,
                        path_style=True, access_key_id=seaweedfs.access_key,
                        secret_access_key=seaweedfs.secret_key)
    async with storage:
        await storage.client.create_bucket(Bucket=storage.bucket)
    yield storage  # the Rindle opens it


@pytest.fixture
async def rindle(media_rindle, seaweed):
    return await media_rindle(seaweed)


async def put(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.put(url, content=body, headers=headers)


async def ticket_for(rindle, body: bytes, *, content_type: str = "image/jpeg", filename: str = "a.jpg"):
    return await rindle.initiate_upload("avatar", filename=filename, content_type=content_type,
                                        byte_size=len(body))


def flip_last(url: str) -> str:
    return url[:-1] + ("0" if url[-1] != "0" else "1")


@pytest.mark.parametrize("abuse", ["tampered signature", "edited expiry", "another content type",
                                   "more bytes", "fewer bytes", "another session's key"])
async def test_a_presigned_put_used_otherwise_than_signed_is_refused_by_the_store(rindle, abuse):
    body = jpeg(120, 80)
    ticket = await ticket_for(rindle, body)
    url, headers, sent = ticket.url, dict(ticket.headers), body
    if abuse == "tampered signature":
        url = flip_last(url)
    elif abuse == "edited expiry":
        url = url.replace("X-Amz-Expires=", "X-Amz-Expires=9")
    elif abuse == "another content type":
        headers["Content-Type"] = "text/html"
    elif abuse == "more bytes":
        sent = body + b"\0" * 10
    elif abuse == "fewer bytes":
        sent = body[:-10]
    else:  # this ticket's signature on the other session's object key
        other = await ticket_for(rindle, body)
        url = other.url.split("?", 1)[0] + "?" + ticket.url.split("?", 1)[1]
    response = await put(url, sent, headers)
    assert response.status_code == 403, (abuse, response.status_code, response.text)
    with pytest.raises(VerificationFailed, match="nothing is stored at the ticket's URL yet"):
        await rindle.verify_upload(ticket.session_id)
    # the session is still open: the client can send the right bytes with the ticket
    assert (await put(ticket.url, body, ticket.headers)).status_code == 200
    assert (await rindle.verify_upload(ticket.session_id)).state == "validating"


async def test_bytes_that_lie_about_their_type_are_quarantined(rindle, redis_url):
    body = png(120, 80)  # declared (and signed) as JPEG
    ticket = await ticket_for(rindle, body)
    assert (await put(ticket.url, body, ticket.headers)).status_code == 200
    await rindle.verify_upload(ticket.session_id)
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(ticket.asset_id)
    assert asset.state == "quarantined" and "image/png" in asset.reason, asset


async def test_a_swap_after_verification_is_quarantined(rindle, redis_url):
    body = jpeg(120, 80)
    ticket = await ticket_for(rindle, body)
    assert (await put(ticket.url, body, ticket.headers)).status_code == 200
    await rindle.verify_upload(ticket.session_id)
    other = bytearray(body)
    other[len(other) // 2] ^= 0xFF  # other bytes of the same size
    assert (await put(ticket.url, bytes(other), ticket.headers)).status_code == 200  # S3 cannot revoke it
    await drain(rindle, redis_url)
    asset = await rindle.get_asset(ticket.asset_id)
    assert asset.state == "quarantined", asset
    assert "the object changed after verification" in asset.reason


async def test_a_replay_after_promotion_never_reaches_the_asset_and_cleanup_removes_it(rindle, seaweed,
                                                                                     redis_url):
    body = jpeg(120, 80)
    ticket = await ticket_for(rindle, body)
    assert (await put(ticket.url, body, ticket.headers)).status_code == 200
    await rindle.verify_upload(ticket.session_id)
    await drain(rindle, redis_url)
    assert (await rindle.get_asset(ticket.asset_id)).state == "ready"
    other = bytearray(body)
    other[len(other) // 2] ^= 0xFF
    assert (await put(ticket.url, bytes(other), ticket.headers)).status_code == 200  # replayed
    original = await rindle.url(ticket.asset_id, ttl=60)
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.get(original)).content == body  # the promoted bytes, not the replay
    report = await maintenance.cleanup_orphans(rindle.runtime, dry_run=False, grace=timedelta(hours=24))
    assert report.counts.get("stray_objects") == 1, report
    upload_key = ticket.url.split("?", 1)[0].split(f"/{seaweed.bucket}/", 1)[1]
    assert await seaweed.head(upload_key) is None
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.get(original)).content == body
