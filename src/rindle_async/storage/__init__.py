"""Object storage: the protocol and its adapters (each loaded on first use)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import (
    Capabilities,
    MultipartUpload,
    ObjectInfo,
    Part,
    PresignedPost,
    PresignedRequest,
    Source,
    Storage,
    StoredPart,
)

_ADAPTERS = {"LocalStorage": "local", "SignedRequest": "local", "S3Storage": "s3"}

__all__ = ["Capabilities", "LocalStorage", "MultipartUpload", "ObjectInfo", "Part", "PresignedPost",
           "PresignedRequest", "S3Storage", "SignedRequest", "Source", "Storage", "StoredPart"]

if TYPE_CHECKING:
    from .local import LocalStorage, SignedRequest
    from .s3 import S3Storage


def __getattr__(name: str) -> Any:
    # the S3 adapter loads aiobotocore: only hosts that use it pay for it
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module 'rindle_async.storage' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
