"""Test support for the media tests: real images, guarded storages, a media Rindle.

Every storage the media tests use is wrapped by :class:`GuardedStorage`, which
fails any storage call made while a Rindle transaction is open in the calling
task (storage I/O never happens inside a database transaction) and counts calls.
"""

from __future__ import annotations

import functools
import inspect
import os
import pathlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import pyvips

from rindle_async import LocalStorage, Profile, S3Storage, Variant
from rindle_async.db.transaction import in_transaction

from .s3server import s3_bucket, s3_endpoint  # noqa: F401  (fixtures)


class StorageCalledInTransaction(AssertionError):
    pass


class GuardedStorage:
    """Delegates to a real adapter; refuses calls inside a Rindle transaction; counts calls."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def adapter(self) -> str:
        return self._inner.adapter

    @property
    def capabilities(self):
        return self._inner.capabilities

    def _check(self, name: str) -> None:
        if in_transaction():
            raise StorageCalledInTransaction(f"storage.{name} was called inside a Rindle transaction")

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            async def stream(*args, **kwargs) -> AsyncIterator:
                self._check(name)
                self.calls[name] += 1
                async for item in attr(*args, **kwargs):
                    self._check(name)
                    yield item
            return stream
        if inspect.iscoroutinefunction(attr):
            @functools.wraps(attr)
            async def call(*args, **kwargs):
                self._check(name)
                self.calls[name] += 1
                return await attr(*args, **kwargs)
            return call

        @functools.wraps(attr)
        def plain(*args, **kwargs):
            self._check(name)
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return plain

    # the Storage protocol's methods, spelled out so isinstance(…, Storage) holds
    def __dir__(self):
        return sorted(set(dir(self._inner)) | {"calls"})


for _name in ("open", "close", "put", "get", "download", "head", "delete", "list", "presign_put",
              "url", "create_multipart", "presign_part", "complete_multipart", "abort_multipart",
              "list_multipart", "presign_post", "list_parts", "sign", "verify"):
    setattr(GuardedStorage, _name, property(lambda self, n=_name: self.__getattr__(n)))


def png(width: int = 64, height: int = 48) -> bytes:
    return pyvips.Image.black(width, height).new_from_image([200, 30, 30]).pngsave_buffer()


def jpeg(width: int = 64, height: int = 48) -> bytes:
    return pyvips.Image.black(width, height).new_from_image([30, 200, 30]).jpegsave_buffer(Q=90)


def gif(width: int = 16, height: int = 16) -> bytes:
    return pyvips.Image.black(width, height).gifsave_buffer()


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A 43-byte GIF whose logical screen declares width x height around one 1x1 frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + control + frame + b"\x3b"


def avatar_profile(storage: str = "local", **options) -> Profile:
    options.setdefault("allow_mime", ("image/jpeg", "image/png"))
    options.setdefault("variants", {
        "thumb": Variant(width=32, height=32, fit="cover", format="webp", quality=80),
        "large": Variant(width=48, fit="inside", format="jpeg", quality=85),
    })
    return Profile(name="avatar", storage=storage, **options)


@pytest.fixture
def local_storage(tmp_path) -> GuardedStorage:
    return GuardedStorage(LocalStorage(root=tmp_path / "media", base_url="http://127.0.0.1:9/rindle",
                                       secret="test-secret-" * 3))


@pytest.fixture
def s3_storage(s3_endpoint, s3_bucket) -> GuardedStorage:  # noqa: F811
    return GuardedStorage(S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True))


@pytest.fixture
def media_rindle(make_rindle, local_storage) -> Callable:
    """``await media_rindle(storage=..., **profile options)``: a Rindle with the avatar profile."""

    async def make(storage: GuardedStorage | None = None, *, relay: bool = False,
                   profiles: list[Profile] | None = None, **profile_options):
        storage = storage or local_storage
        return await make_rindle(relay=relay, storages={"media": storage},
                                 profiles=profiles or [avatar_profile("media", **profile_options)])

    return make


def stored_files(root) -> list[pathlib.Path]:
    """Every file under ``root``; safe while a worker deletes files and prunes folders."""
    return [pathlib.Path(folder, name) for folder, _, names in os.walk(root) for name in names]
