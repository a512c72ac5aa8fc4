"""The storage-key layout, built and parsed here and nowhere else.

Every object of an asset lives under ``<profile>/<id[:2]>/<id>/``: the direct upload's
landing key ``upload.<ext>``, the checked original ``original.<ext>``, and the variants
``variants/<name>-<recipe digest>.<ext>``.  Keys are built from server-side values only
(asset ids are uuid4, so keys are unguessable); purge deletes an asset's prefix and
cleanup reads the asset id back out of a key.
"""

from __future__ import annotations

import re
import uuid

__all__ = ["asset_id_of", "asset_prefix", "is_upload_key", "new_storage_key", "variant_key"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
_DIGEST = re.compile(r"[0-9a-f]{8,64}")


def new_storage_key(profile: str, asset_id: str | uuid.UUID, extension: str | None, *,
                    role: str = "original") -> str:
    """The storage key of an asset's file: ``<profile>/<id[:2]>/<id>/<role>.<ext>``.

    Built from server-side values only; asset ids are uuid4, so keys are unguessable.
    A direct upload lands at the ``upload`` key (the client holds a URL for it); promotion
    stores the bytes it checked at the ``original`` key, which no client can write.

    profile: the profile name (``^[a-z0-9][a-z0-9_-]{0,62}$``).
    asset_id: the asset's UUID (canonical string or ``uuid.UUID``).
    extension: the sniffed type's extension (``extension_for``), dropped unless ^[a-z0-9]{1,10}$.
    role: ``original`` or ``upload``.
    """
    if role not in ("original", "upload"):
        raise ValueError(f"role={role!r} must be 'original' or 'upload'")
    prefix = _asset_prefix(profile, asset_id)
    suffix = f".{extension}" if isinstance(extension, str) and _EXTENSION.fullmatch(extension) else ""
    return f"{prefix}/{role}{suffix}"


def is_upload_key(key: str) -> bool:
    """Whether ``key`` is a direct upload's landing key (a client may still write to it).

    key: a key made by :func:`new_storage_key`.
    """
    return key.rpartition("/")[2].partition(".")[0] == "upload"


def variant_key(profile: str, asset_id: str | uuid.UUID, variant_name: str, digest: str,
                extension: str) -> str:
    """The storage key of a rendered variant, unique per recipe digest.

    A new recipe gets a new key, so it never overwrites the object a live URL points at.

    profile: the profile name (``^[a-z0-9][a-z0-9_-]{0,62}$``).
    asset_id: the asset's UUID (canonical string or ``uuid.UUID``).
    variant_name: the variant name (same pattern as ``profile``).
    digest: the variant's recipe digest (lowercase hex).
    extension: the output format's extension, ``^[a-z0-9]{1,10}$``.
    """
    prefix = _asset_prefix(profile, asset_id)
    _check_name("variant name", variant_name)
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        raise ValueError(f"recipe digest {digest!r} is not 8-64 lowercase hex digits")
    if not (isinstance(extension, str) and _EXTENSION.fullmatch(extension)):
        raise ValueError(f"variant extension {extension!r} does not match ^[a-z0-9]{{1,10}}$")
    return f"{prefix}/variants/{variant_name}-{digest}.{extension}"


def _asset_prefix(profile: str, asset_id: str | uuid.UUID) -> str:
    _check_name("profile name", profile)
    asset = _canonical_uuid(asset_id)
    return f"{profile}/{asset[:2]}/{asset}"


def _check_name(what: str, name: object) -> None:
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise ValueError(f"{what} {name!r} does not match ^[a-z0-9][a-z0-9_-]{{0,62}}$")


def _canonical_uuid(asset_id: object) -> str:
    if isinstance(asset_id, uuid.UUID):
        return str(asset_id)
    try:
        canonical = str(uuid.UUID(asset_id)) if isinstance(asset_id, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != asset_id:  # one spelling per asset, one key
        raise ValueError(f"asset id {asset_id!r} is not a canonical lowercase UUID string")
    return canonical


def asset_prefix(storage_key: str) -> str:
    """The key prefix that holds every object of the asset one of whose keys is ``storage_key``.

    storage_key: the asset's original (or upload) key.
    """
    return storage_key.rsplit("/", 1)[0] + "/"


def asset_id_of(key: str) -> uuid.UUID | None:
    """The asset id a key laid out as ``<profile>/<id[:2]>/<asset id>/...`` names; None for a key
    of another layout.

    key: any storage key.
    """
    parts = key.split("/")
    try:
        return uuid.UUID(parts[2]) if len(parts) > 3 else None
    except ValueError:
        return None
