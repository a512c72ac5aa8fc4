"""rindle_async: durable media lifecycle for Starlette and aiohttp applications."""

from __future__ import annotations

from .app import Rindle
from .errors import (
    ConfigurationError,
    DeliveryForbidden,
    InvalidTransition,
    NotFound,
    NotReady,
    RindleError,
    StorageError,
    TooLarge,
    TransactionError,
    Unsupported,
    ValidationError,
    VerificationFailed,
)
from .events import (
    AssetStateChanged,
    CleanupRun,
    DeliverySigned,
    Event,
    UploadCompleted,
    UploadStarted,
    VariantStateChanged,
)
from .jobs import JobKind, JobRun
from .models import Asset, AssetVariant, Attachment, UploadTicket
from .profiles import Profile, Variant, recipe_digest
from .storage.local import LocalStorage
from .storage.s3 import S3Storage

__all__ = [
    "Asset", "AssetStateChanged", "AssetVariant", "Attachment", "CleanupRun", "ConfigurationError",
    "DeliveryForbidden", "DeliverySigned", "Event", "InvalidTransition", "JobKind", "JobRun", "LocalStorage",
    "NotFound", "NotReady", "Profile", "Rindle", "RindleError", "S3Storage", "StorageError", "TooLarge", "TransactionError", "Unsupported",
    "UploadCompleted", "UploadStarted", "UploadTicket", "ValidationError", "Variant", "VariantStateChanged",
    "VerificationFailed", "recipe_digest",
]


def __getattr__(name: str) -> type:
    # `arq rindle_async.WorkerSettings` builds the settings from RINDLE_APP on first access.
    if name == "WorkerSettings":
        from .worker import from_environment

        return from_environment()
    raise AttributeError(f"module 'rindle_async' has no attribute {name!r}")
