"""The host's media setup: the avatar profile and the ``Rindle`` object, configured from the environment.

The web app and the worker both import this module, so they share one configuration:

    RINDLE_APP=media:rindle arq rindle_async.WorkerSettings

Environment:
    RINDLE_DATABASE_URL  PostgreSQL DSN (default: postgresql://postgres@127.0.0.1:5432/postgres)
    RINDLE_REDIS_URL     Redis URL for arq (default: redis://127.0.0.1:6379/0)
    RINDLE_MEDIA_ROOT    folder of the local storage (default: ./var/media)
    RINDLE_BASE_URL      where this app is reached (default: http://127.0.0.1:8000)
    RINDLE_SECRET        HMAC key for local storage URLs (a public development default otherwise)
    RINDLE_S3_BUCKET     store media in this S3 bucket instead of RINDLE_MEDIA_ROOT
    RINDLE_S3_ENDPOINT   an S3-compatible endpoint (MinIO, R2, ...); path-style addressing
    RINDLE_S3_REGION     the bucket's region (default: us-east-1)
    RINDLE_MAX_BYTES     the avatar profile's max_bytes (default: 10 MiB)
"""

from __future__ import annotations

import os
import sys

from rindle_async import LocalStorage, Profile, Rindle, S3Storage, Variant

#: Where app.py mounts the local storage routes; the storage's base_url ends with it.
LOCAL_PREFIX = "/rindle"
DEV_SECRET = "public-development-secret-never-deploy-me"

BASE_URL = os.environ.get("RINDLE_BASE_URL", "http://127.0.0.1:8000").rstrip("/")


def local_secret() -> str:
    secret = os.environ.get("RINDLE_SECRET")
    if secret:
        return secret
    banner = "!" * 78
    sys.stderr.write(f"{banner}\n  RINDLE_SECRET is not set: local storage URLs are signed with a PUBLIC\n"
                     f"  development secret, so anyone can forge upload and download URLs.\n"
                     f"  Set RINDLE_SECRET to a long random value before deploying, e.g.\n"
                     f"  python -c 'import secrets; print(secrets.token_urlsafe(32))'\n{banner}\n")
    return DEV_SECRET


def storage() -> tuple[str, LocalStorage | S3Storage]:
    """The storage named in the profile: S3 when RINDLE_S3_BUCKET is set, the local folder otherwise."""
    bucket = os.environ.get("RINDLE_S3_BUCKET")
    if bucket:
        endpoint = os.environ.get("RINDLE_S3_ENDPOINT") or None
        return "s3", S3Storage(bucket=bucket, endpoint_url=endpoint, path_style=endpoint is not None,
                               region=os.environ.get("RINDLE_S3_REGION", "us-east-1"))
    return "local", LocalStorage(root=os.environ.get("RINDLE_MEDIA_ROOT", "./var/media"),
                                 base_url=BASE_URL + LOCAL_PREFIX, secret=local_secret())


STORAGE, _storage = storage()

avatar = Profile(
    name="avatar",
    storage=STORAGE,
    allow_mime=("image/jpeg", "image/png", "image/webp"),
    max_bytes=int(os.environ.get("RINDLE_MAX_BYTES", 10 * 1024 * 1024)),
    max_pixels=50_000_000,
    variants={
        "thumb": Variant(width=128, height=128, fit="cover", format="webp", quality=80),
        "large": Variant(width=800, height=800, fit="inside", format="jpeg", quality=85),
    },
    # the page's responsive <picture>: WebP sources and a JPEG <img>, 320 and 640 wide
    ladder=(320, 640),
    ladder_formats=("webp", "jpeg"),
)
#: the variants the page shows one by one (the ladder's feed the <picture>)
SHOWN = ("thumb", "large")

rindle = Rindle(
    database_url=os.environ.get("RINDLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    redis_url=os.environ.get("RINDLE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    storages={STORAGE: _storage},
    profiles=[avatar],
)
