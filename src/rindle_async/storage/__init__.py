"""Object storage: the protocol and its adapters."""

from __future__ import annotations

from .base import Capabilities, MultipartUpload, ObjectInfo, Part, PresignedRequest, Source, Storage
from .local import LocalStorage, SignedRequest
from .s3 import S3Storage

__all__ = ["Capabilities", "LocalStorage", "MultipartUpload", "ObjectInfo", "Part", "PresignedRequest",
           "S3Storage", "SignedRequest", "Source", "Storage"]
