"""The SigV4 presigner: byte-identical to botocore's presigned URLs over thousands of random
credentials, addresses, keys, parameters, headers and clocks; credentials refreshed when they
expire; and a real signature-checking S3 server (SeaweedFS) serving what it signs and refusing
what was tampered with or has expired."""

from __future__ import annotations

import datetime
import random
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import httpx
import pytest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from rindle_async import S3Storage, ValidationError
from rindle_async.storage.s3 import botocore_session
from rindle_async.storage.signing import quote_component
from rindle_async.storage.sigv4 import Presigner, host_header, signing_key

from .s3server import SeaweedS3, seaweedfs  # noqa: F401  (fixture)

SEED = 20240506
CASES = 2000
EPOCH = datetime.datetime(1970, 1, 1)
#: Where botocore puts each client parameter the cases use: query (name) or header (name).
QUERY = {"ResponseContentType": "response-content-type",
         "ResponseContentDisposition": "response-content-disposition",
         "ResponseCacheControl": "response-cache-control",
         "ResponseContentLanguage": "response-content-language",
         "ResponseContentEncoding": "response-content-encoding", "VersionId": "versionId",
         "UploadId": "uploadId", "PartNumber": "partNumber"}
HEADERS = {"ContentType": "Content-Type", "ContentLength": "Content-Length",
           "ContentDisposition": "Content-Disposition", "CacheControl": "Cache-Control",
           "ContentLanguage": "Content-Language"}
#: Keys mix unreserved, reserved and unsafe ASCII, spaces, percent signs, slashes and non-ASCII.
KEY_ALPHABET = ("abcXYZ019-_.~ +%/!*'();:@&=$,?#[]<>{}|\\^`\"\t"
                "üßé€日本語😀\u00a0\u2028")
VALUE_ALPHABET = "abcXYZ019-_.~ +%/!*'();:@&=$,?#[]\"; =äöü€"
#: (endpoint_url, addressing style, region, bucket): path-style, virtual-hosted and AWS's own.
ADDRESSES = [
    ("http://127.0.0.1:9000", "path", "us-east-1", "media-bucket"),
    ("http://localhost:9000/", "path", "eu-central-1", "media.dotted"),
    ("https://S3.Example.com:443", "path", "ap-south-1", "media-bucket"),
    ("https://s3.example.com:8443/gateway/", "path", "us-west-2", "media-bucket"),
    ("http://[::1]:9000", "path", "us-east-1", "media-bucket"),
    ("https://s3.example.com", "virtual", "eu-west-1", "media-bucket"),
    (None, "auto", "us-east-1", "media-bucket"),
    (None, "virtual", "eu-west-1", "media-bucket"),
    (None, "auto", "ap-northeast-1", "media.dotted"),
]


def text(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def random_case(rng: random.Random) -> tuple[str, str, dict, dict, dict]:
    """(client method, HTTP method, botocore params, our query, our headers)."""
    op = rng.choice(("get_object", "get_object", "put_object", "upload_part"))
    params: dict = {}
    if op == "get_object":
        for name in rng.sample(["ResponseContentType", "ResponseContentDisposition", "ResponseCacheControl",
                                "ResponseContentLanguage", "ResponseContentEncoding", "VersionId"],
                               rng.randint(0, 4)):
            params[name] = text(rng, VALUE_ALPHABET, 1, 30)
    elif op == "put_object":
        for name in rng.sample(["ContentType", "ContentLength", "ContentDisposition", "CacheControl",
                                "ContentLanguage"], rng.randint(0, 4)):
            # header values: printable ASCII with runs of spaces, which SigV4 trims and squeezes
            params[name] = (rng.randint(0, 5 * 2**30) if name == "ContentLength"
                            else text(rng, "abc/;=-+. äé", 1, 25).strip() or "x")
        if rng.random() < 0.3:
            params["Metadata"] = {text(rng, "abcxyz-0", 1, 8): text(rng, "abc 01;", 1, 12).strip() or "x"
                                  for _ in range(rng.randint(1, 3))}
        if rng.random() < 0.1:
            params["ContentType"] = "application/x-www-form-urlencoded; charset=utf-8"
    else:
        params = {"UploadId": text(rng, VALUE_ALPHABET, 1, 60), "PartNumber": rng.randint(1, 10_000)}
        if rng.random() < 0.5:
            params = dict(reversed(params.items()))
    query = {QUERY[k]: v for k, v in params.items() if k in QUERY}
    headers = {HEADERS[k]: v for k, v in params.items() if k in HEADERS}
    headers.update({f"x-amz-meta-{name}": value for name, value in params.get("Metadata", {}).items()})
    return op, "GET" if op == "get_object" else "PUT", params, query, headers


@pytest.fixture
def frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch):
    """Set botocore's signing clock: ``clock.at = datetime``."""

    class Clock:
        at = EPOCH

    clock = Clock()
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: clock.at)
    return clock


async def test_urls_are_byte_identical_to_botocores(frozen_botocore_clock) -> None:
    rng = random.Random(SEED)
    session = botocore_session()
    async with AsyncExitStack() as stack:
        signers = []  # (botocore client, bucket, credentials, our presigner for the same address)
        for endpoint, style, region, bucket in ADDRESSES:
            for token in (None, "session/token+=" + text(rng, "abcXYZ019+/=", 20, 80)):
                credentials = ReadOnlyCredentials("AKIA" + text(rng, "ABCXYZ0189", 16, 16),
                                                  text(rng, "abcXYZ019+/", 40, 40), token, None)
                client = await stack.enter_async_context(session.create_client(
                    "s3", endpoint_url=endpoint, region_name=region,
                    config=Config(signature_version="s3v4", s3={"addressing_style": style}),
                    aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                    aws_session_token=token))
                probe = await client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
                address, query = probe.split("?", 1)
                scope = parse_qs(query)["X-Amz-Credential"][0].split("/")
                signers.append((client, bucket, credentials, Presigner(
                    address=address.removesuffix("/k"), region=scope[2], service=scope[3])))
        for case in range(CASES):
            which = rng.randrange(len(signers))
            client, bucket, credentials, presigner = signers[which]
            key = text(rng, KEY_ALPHABET, 1, 40)
            op, method, params, query, headers = random_case(rng)
            second, micro = rng.randrange(0, 4_102_444_800), rng.randrange(1_000_000)
            frozen_botocore_clock.at = EPOCH + datetime.timedelta(seconds=second, microseconds=micro)
            expires_in = rng.randint(1, 7 * 24 * 3600)
            theirs = await client.generate_presigned_url(op, Params={"Bucket": bucket, "Key": key, **params},
                                                         ExpiresIn=expires_in)
            ours = presigner.url(method, key, credentials=credentials, expires_in=expires_in, query=query,
                                 headers=headers, now=second + micro / 1e6)
            assert ours == theirs, (f"case {case} (seed {SEED}): {op} {key!r} {params} at "
                                    f"{frozen_botocore_clock.at} via {ADDRESSES[which // 2]}")


async def test_s3storage_urls_are_botocores_at_the_same_second(frozen_botocore_clock) -> None:
    """Every URL S3Storage presigns (GET with response overrides, PUT, part PUT) is botocore's."""
    rng = random.Random(SEED + 1)
    for endpoint, style, region, bucket in ADDRESSES:
        storage = S3Storage(bucket=bucket, endpoint_url=endpoint, region=region, path_style=style == "path",
                            access_key_id="AKIDEXAMPLE", secret_access_key="secret/+example",
                            session_token=rng.choice([None, "token/+="]))
        async with storage:
            assert await storage.presigner() is not None, "the probe URL must be reproduced"
            for _ in range(40):
                key = text(rng, KEY_ALPHABET, 1, 30)
                content_type, disposition = rng.choice([("image/webp", None), (None, "inline"),
                                                        ("image/png", 'attachment; filename="a b.png"')])
                cases = [(await storage.url(key, expires_in=300, content_type=content_type,
                                            disposition=disposition),
                          "get_object", {"ResponseContentType": content_type,
                                         "ResponseContentDisposition": disposition}, 300),
                         ((await storage.presign_put(key, content_type="image/png", byte_size=1234,
                                                     expires_in=60)).url,
                          "put_object", {"ContentType": "image/png", "ContentLength": 1234}, 60),
                         ((await storage.presign_part(key, "upload/+id=", 7, expires_in=90)).url,
                          "upload_part", {"UploadId": "upload/+id=", "PartNumber": 7}, 90)]
                for ours, op, params, expires_in in cases:
                    signed_at = parse_qs(urlsplit(ours).query)["X-Amz-Date"][0]
                    frozen_botocore_clock.at = datetime.datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ")
                    theirs = await storage.client.generate_presigned_url(op, Params={
                        "Bucket": bucket, "Key": key, **{k: v for k, v in params.items() if v}},
                        ExpiresIn=expires_in)
                    assert ours == theirs
            public = await storage.url("a b/c+d.png", expires_in=None)
            assert public == (await storage.url("a b/c+d.png", expires_in=60)).split("?")[0]


async def test_s3storage_leaves_signing_to_botocore_when_its_probe_is_not_reproduced(
        frozen_botocore_clock, monkeypatch, caplog) -> None:
    """The safety net for a botocore that signs differently one day (or an S3 Express bucket)."""
    monkeypatch.setattr(Presigner, "url", lambda self, *args, **kwargs: "https://wrong.example/")
    storage = S3Storage(bucket="media", endpoint_url="http://127.0.0.1:9000", path_style=True,
                        access_key_id="AKIDEXAMPLE", secret_access_key="secret")
    async with storage:
        ours = await storage.url("a b.png", expires_in=60, content_type="image/png")
        assert await storage.presigner() is None
        signed_at = parse_qs(urlsplit(ours).query)["X-Amz-Date"][0]
        frozen_botocore_clock.at = datetime.datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ")
        assert ours == await storage.client.generate_presigned_url("get_object", Params={
            "Bucket": "media", "Key": "a b.png", "ResponseContentType": "image/png"}, ExpiresIn=60)
    assert "presigns through botocore" in caplog.text


def test_the_signing_key_is_derived_once_per_day_and_secret() -> None:
    presigner = Presigner(address="https://bucket.s3.amazonaws.com", region="us-east-1")
    first = presigner.mac("secret", "20240506")
    assert presigner.mac("secret", "20240506") is first
    assert presigner.mac("secret", "20240507") is not first
    assert presigner.mac("rotated", "20240507").digest(b"m") != presigner.mac("secret", "20240507").digest(b"m")
    # the AWS documentation's worked example of the key derivation
    assert signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam").hex() == (
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9")


def test_presigner_helpers_and_bad_addresses() -> None:
    assert quote_component("a b+c/~ü") == "a%20b%2Bc%2F~%C3%BC"
    assert host_header("https://S3.Example.com:443/x") == "s3.example.com"
    assert host_header("http://user:pw@[::1]:9000") == "[::1]:9000"
    for address in ("ftp://example.com", "https://", "https://example.com/?x=1"):
        with pytest.raises(ValidationError, match="must be an http\\(s\\) URL"):
            Presigner(address=address, region="us-east-1")
    with pytest.raises(ValidationError, match="region=''"):
        Presigner(address="https://example.com", region="")


CREDENTIAL_PROCESS = textwrap.dedent("""
    import datetime, json, pathlib, sys
    counter = pathlib.Path(sys.argv[1])
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    # 12 minutes left: inside botocore's 15-minute advisory window, so every signing refreshes
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=12)
    print(json.dumps({"Version": 1, "AccessKeyId": f"ASIAROTATED{n:04d}", "SecretAccessKey": f"secret-{n}",
                      "SessionToken": f"token-{n}", "Expiration": expiry.isoformat()}))
""")


async def test_expiring_chain_credentials_are_refreshed_not_kept(tmp_path, monkeypatch) -> None:
    """Credentials from the AWS chain (here a real credential_process) that are about to expire
    are fetched again for the next URL instead of being cached for the client's lifetime."""
    script, counter = tmp_path / "credentials.py", tmp_path / "calls"
    script.write_text(CREDENTIAL_PROCESS)
    (tmp_path / "config").write_text(f"[default]\ncredential_process = {sys.executable} {script} {counter}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    async with S3Storage(bucket="media", endpoint_url="http://127.0.0.1:9000", path_style=True) as storage:
        first = parse_qs(urlsplit(await storage.url("k", expires_in=60)).query)
        second = parse_qs(urlsplit(await storage.url("k", expires_in=60)).query)
    assert first["X-Amz-Credential"][0].startswith("ASIAROTATED")
    assert first["X-Amz-Credential"] != second["X-Amz-Credential"]
    assert second["X-Amz-Security-Token"] == [f"token-{int(second['X-Amz-Credential'][0][11:15])}"]


# -- a server that checks signatures ------------------------------------------------------------


@pytest.fixture
async def seaweed_storage(seaweedfs: SeaweedS3) -> AsyncIterator[S3Storage]:  # noqa: F811
    storage = S3Storage(bucket=f"rindle-{time.monotonic_ns() % 10**12}", endpoint_url=seaweedfs.endpoint,
                        path_style=True, access_key_id=seaweedfs.access_key,
                        secret_access_key=seaweedfs.secret_key)
    async with storage:
        await storage.client.create_bucket(Bucket=storage.bucket)
        yield storage


async def test_seaweedfs_serves_our_signed_urls_and_refuses_tampered_or_expired_ones(
        seaweed_storage: S3Storage, seaweedfs: SeaweedS3) -> None:  # noqa: F811
    storage, key, body = seaweed_storage, "photos/a b+ü~%.png", b"\x89PNG rindle sigv4"
    upload = await storage.presign_put(key, content_type="image/png", byte_size=len(body), expires_in=60)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.put(upload.url, content=body, headers=upload.headers)
        assert response.status_code == 200, response.text
        url = await storage.url(key, expires_in=60, content_type="image/webp", disposition="inline")
        response = await client.get(url)
        assert response.status_code == 200, response.text
        assert response.content == body and response.headers["content-type"] == "image/webp"
        assert response.headers["content-disposition"] == "inline"

        presigner = await storage.presigner()
        credentials = ReadOnlyCredentials(seaweedfs.access_key, seaweedfs.secret_key, None, None)
        expired = presigner.url("GET", key, credentials=credentials, expires_in=60, now=time.time() - 120)
        flipped = "0" if url[-1] != "0" else "1"
        refused = {
            "tampered signature": url[:-1] + flipped,
            "tampered key": url.replace("/photos/", "/photo5/"),
            "edited expiry": url.replace("X-Amz-Expires=60", "X-Amz-Expires=6000"),
            "expired": expired,
        }
        for what, bad in refused.items():
            response = await client.get(bad)
            assert response.status_code == 403, (what, response.status_code, response.text)
        response = await client.put(upload.url, content=body, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 403, "the Content-Type is a signed header"


async def test_seaweedfs_holds_a_post_policy_to_its_key_type_and_size(seaweed_storage: S3Storage) -> None:
    storage, key, body = seaweed_storage, "avatar/ab/post.png", b"\x89PNG" + bytes(1000)
    post = await storage.presign_post(key, content_type="image/png", max_bytes=2000, expires_in=60)

    async def send(fields: dict[str, str], data: bytes) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(post.url, data=fields, files={"file": ("f.png", data)})

    refused = {  # what SeaweedFS 4.48 answers
        "oversize body": (post.fields, body * 3, "EntityTooLarge"),
        "wrong Content-Type": ({**post.fields, "Content-Type": "image/jpeg"}, body, "Policy Condition failed"),
        "another key": ({**post.fields, "key": "avatar/ab/other.png"}, body, "Policy Condition failed"),
        "tampered policy": ({**post.fields, "policy": post.fields["policy"][:-4] + "AAAA"}, body,
                            "SignatureDoesNotMatch"),
    }
    for what, (fields, data, reason) in refused.items():
        response = await send(fields, data)
        assert response.status_code in (400, 403) and reason in response.text, (what, response.text)
    assert await storage.head(key) is None and await storage.head("avatar/ab/other.png") is None
    response = await send(post.fields, body)
    assert response.status_code in (200, 201, 204), response.text
    info = await storage.head(key)
    assert info is not None and (info.size, info.content_type) == (len(body), "image/png")
