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
    TransactionError,
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
from .models import Asset, AssetVariant, Attachment
from .profiles import Profile, Variant, recipe_digest

__all__ = [
    "Asset", "AssetStateChanged", "AssetVariant", "Attachment", "CleanupRun", "ConfigurationError",
    "DeliveryForbidden", "DeliverySigned", "Event", "InvalidTransition", "JobKind", "JobRun",
    "NotFound", "NotReady", "Profile", "Rindle", "RindleError", "StorageError", "TransactionError",
    "UploadCompleted", "UploadStarted", "ValidationError", "Variant", "VariantStateChanged",
    "VerificationFailed", "recipe_digest",
]
