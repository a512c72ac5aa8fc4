"""rindle_async: durable media lifecycle for Starlette and aiohttp applications.

The public names load on first use (PEP 562): ``import rindle_async`` costs almost
nothing, and a process that needs one part (a libvips pool process, a host that
uses only local storage) never loads the rest (aiobotocore, asyncpg, arq, ...).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the module (below this package) that defines it
_EXPORTS = {
    "Rindle": "app",
    **dict.fromkeys(("ConfigurationError", "DeliveryForbidden", "InvalidTransition", "NotFound",
                     "NotReady", "ObjectChanged", "OffsetMismatch", "RindleError", "StorageError", "TooLarge",
                     "TransactionError", "Unsupported", "UploadClosed", "ValidationError",
                     "VerificationFailed"), "errors"),
    **dict.fromkeys(("AssetStateChanged", "CleanupRun", "DeliverySigned", "Event", "OwnerErased",
                     "UploadCompleted", "UploadStarted", "VariantStateChanged"), "events"),
    "JobKind": "ledger.kinds",
    "JobRun": "ledger.runner",
    **dict.fromkeys(("Asset", "AssetVariant", "Attachment", "Delivered", "ImageMetadata", "Picture",
                     "PictureSource", "UploadSession", "UploadTicket"), "models"),
    "Placeholder": "placeholders",
    **dict.fromkeys(("Profile", "Variant", "recipe_digest"), "profiles"),
    "ResumableUpload": "uploads.resumable",
    **dict.fromkeys(("Part", "PresignedPost", "PresignedRequest", "StoredPart"), "storage.base"),
    "LocalStorage": "storage.local",
    "S3Storage": "storage.s3",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .app import Rindle
    from .errors import (
        ConfigurationError,
        DeliveryForbidden,
        InvalidTransition,
        NotFound,
        NotReady,
        ObjectChanged,
        OffsetMismatch,
        RindleError,
        StorageError,
        TooLarge,
        TransactionError,
        Unsupported,
        UploadClosed,
        ValidationError,
        VerificationFailed,
    )
    from .events import (
        AssetStateChanged,
        CleanupRun,
        DeliverySigned,
        Event,
        OwnerErased,
        UploadCompleted,
        UploadStarted,
        VariantStateChanged,
    )
    from .ledger.kinds import JobKind
    from .ledger.runner import JobRun
    from .models import (
        Asset,
        AssetVariant,
        Attachment,
        Delivered,
        ImageMetadata,
        Picture,
        PictureSource,
        UploadSession,
        UploadTicket,
    )
    from .placeholders import Placeholder
    from .profiles import Profile, Variant, recipe_digest
    from .storage.base import Part, PresignedPost, PresignedRequest, StoredPart
    from .storage.local import LocalStorage
    from .storage.s3 import S3Storage
    from .uploads.resumable import ResumableUpload


def __getattr__(name: str) -> Any:
    # `arq rindle_async.WorkerSettings` builds the settings from RINDLE_APP on first access.
    if name == "WorkerSettings":
        from .app_loader import worker_settings_from_environment

        settings = globals()["WorkerSettings"] = worker_settings_from_environment()
        return settings
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rindle_async' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "WorkerSettings"})
