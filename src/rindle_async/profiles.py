"""Profiles and variants: what an upload may be and what gets rendered from it.

Both are frozen msgspec structs validated at construction, so a bad option fails
when the host builds its profiles, not later inside a worker.  ``recipe_digest``
names a variant's rendering recipe; a stored variant whose digest differs from
its profile's is stale.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping

import msgspec
from msgspec.structs import force_setattr

from .errors import ConfigurationError, ValidationError

__all__ = ["RECIPE_VERSION", "Profile", "Variant", "find_profile", "index_profiles", "recipe_digest"]

#: Bump when rendering changes in a way the variant options do not capture.
RECIPE_VERSION: int = 1

FITS = ("cover", "contain", "inside", "fill")
# format -> (content type, file extension, libvips saver)
_FORMATS: dict[str, tuple[str, str, str]] = {
    "jpeg": ("image/jpeg", "jpg", "jpegsave"),
    "png": ("image/png", "png", "pngsave"),
    "webp": ("image/webp", "webp", "webpsave"),
    "avif": ("image/avif", "avif", "heifsave"),
    "gif": ("image/gif", "gif", "gifsave"),
}
MAX_DIMENSION = 16384
MAX_PRESIGN_TTL = 7 * 24 * 3600
_PRESIGN_WHY = " (S3 presigned URLs are valid for at most 7 days)"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_NAME_RULE = "does not match ^[a-z0-9][a-z0-9_-]{0,62}$ (it appears in storage keys and rows)"
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def _invalid(owner: str, field: str, value: object, rule: str) -> ConfigurationError:
    return ConfigurationError(f"{owner}.{field}={value!r} {rule}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(owner: str, field: str, value: object, low: int, high: int | None = None,
               why: str = "") -> None:
    if (isinstance(value, int) and not isinstance(value, bool)
            and value >= low and (high is None or value <= high)):
        return
    allowed = f"an int in {low}..{high}" if high is not None else f"an int >= {low}"
    raise _invalid(owner, field, value, f"is not {allowed}{why}")


@functools.cache
def libvips_can_save(fmt: str) -> bool:
    """Whether the installed libvips can write ``fmt``; cached per process."""
    import pyvips  # here, not at module top: importing profiles must not load libvips

    if pyvips.type_find("VipsOperation", f"{_FORMATS[fmt][2]}_target") == 0:
        return False
    if fmt != "avif":
        return True
    if ".avif" not in pyvips.get_suffixes():
        return False
    try:  # heifsave exists whenever libheif does; AV1 also needs an encoder plugin
        pyvips.Image.black(16, 16).heifsave_buffer(compression="av1")
    except pyvips.Error:
        return False
    return True


def libvips_version() -> str:
    """The installed libvips's version, ``major.minor.micro``."""
    import pyvips

    return ".".join(str(pyvips.version(part)) for part in range(3))


class Variant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rendition of an image; every field is part of its recipe digest.

    width: target width in pixels, 1..16384, or None.
    height: target height in pixels, 1..16384, or None.
    fit: cover (crop), contain (pad), inside (fit within), fill (stretch); inside needs one side.
    format: output format, one of jpeg, png, webp, avif, gif, and one the installed libvips can write.
    quality: encoder quality, 1..100.
    keep_metadata: keep EXIF/XMP/ICC metadata instead of stripping it.
    background: RGB used where contain pads and where alpha is flattened into jpeg, each 0..255.
    """

    width: int | None = None
    height: int | None = None
    fit: str = "cover"
    format: str = "webp"
    quality: int = 80
    keep_metadata: bool = False
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        for field in ("width", "height"):
            if getattr(self, field) is not None:
                _check_int("Variant", field, getattr(self, field), 1, MAX_DIMENSION)
        if self.fit not in FITS:
            raise _invalid("Variant", "fit", self.fit, f"is not one of {', '.join(FITS)}")
        if self.fit == "inside" and self.width is None and self.height is None:
            raise _invalid("Variant", "fit", self.fit, "needs width or height (both are None)")
        if self.fit != "inside" and (self.width is None or self.height is None):
            raise _invalid("Variant", "fit", self.fit, f"needs both width and height "
                           f"(got width={self.width!r}, height={self.height!r}); "
                           f"use fit='inside' to bound a single side")
        if self.format not in _FORMATS:
            raise _invalid("Variant", "format", self.format, f"is not one of {', '.join(_FORMATS)}")
        _check_int("Variant", "quality", self.quality, 1, 100)
        if not isinstance(self.keep_metadata, bool):
            raise _invalid("Variant", "keep_metadata", self.keep_metadata, "is not a bool")
        if not (isinstance(self.background, (tuple, list)) and len(self.background) == 3
                and all(_is_int(c) and 0 <= c <= 255 for c in self.background)):
            raise _invalid("Variant", "background", self.background,
                           "is not an (r, g, b) tuple of ints in 0..255")
        if isinstance(self.background, list):  # decoding converts lists; direct construction does not
            force_setattr(self, "background", tuple(self.background))
        if not libvips_can_save(self.format):
            raise _invalid("Variant", "format", self.format,
                           f"cannot be written by the installed libvips {libvips_version()} "
                           f"(it has no {_FORMATS[self.format][2]} able to write {self.format}); "
                           "pick another format or install a libvips build that has it")

    @property
    def content_type(self) -> str:
        """The MIME type of the rendered file, e.g. ``image/webp``."""
        return _FORMATS[self.format][0]

    @property
    def extension(self) -> str:
        """The file extension of the rendered file, without the dot, e.g. ``jpg``."""
        return _FORMATS[self.format][1]


def recipe_digest(variant: Variant) -> str:
    """A stable 20-hex-digit digest of the variant's recipe, equal in every process.

    variant: the variant whose options (and ``RECIPE_VERSION``) are hashed.
    """
    canonical = msgspec.json.encode({"recipe_version": RECIPE_VERSION, "variant": variant},
                                    order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:20]


class Profile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, dict=True):
    """What an upload may be, where it is stored, and which variants are rendered from it.

    name: stable id stored in rows and storage keys, matching ^[a-z0-9][a-z0-9_-]{0,62}$.
    storage: key into ``Rindle(storages=...)``.
    allow_mime: accepted content types (sniffed from the bytes), lowercase type/subtype; a list is accepted.
    max_bytes: largest accepted upload in bytes.
    max_pixels: largest accepted width x height, checked from the header before decoding.
    variants: variant name (same pattern as ``name``) to ``Variant``.
    public: serve plain URLs instead of signed, expiring ones.
    url_ttl: seconds a signed delivery URL stays valid, 1..604800 (S3's 7-day presign limit).
    upload_ttl: seconds an upload session may stay open, 60..604800.
    ladder: widths of a responsive-image ladder, ascending, e.g. ``(320, 640, 1280)``: each
        width in each of ``ladder_formats`` becomes a variant ``w<width>-<format>``
        (``fit="inside"``, so never wider than the original); ``srcset()`` and
        ``picture_sources()`` serve them.
    ladder_formats: the ladder's output formats, e.g. ``("avif", "webp", "jpeg")``.
    ladder_quality: the encoder quality of the ladder's variants, 1..100.
    serve_original: whether the uploaded original may be delivered (``url()`` without a
        variant, ``fallback="original"``); an original carries everything the uploader's
        device wrote into it (GPS position, serial numbers), which variants never do.
    """

    name: str
    storage: str = "local"
    allow_mime: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp")
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    variants: dict[str, Variant] = msgspec.field(default_factory=dict)
    public: bool = False
    url_ttl: int = 300
    upload_ttl: int = 3600
    ladder: tuple[int, ...] = ()
    ladder_formats: tuple[str, ...] = ("webp",)
    ladder_quality: int = 80
    serve_original: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            raise _invalid("Profile", "name", self.name, _NAME_RULE)
        if not (isinstance(self.storage, str) and self.storage):
            raise _invalid("Profile", "storage", self.storage, "is not a non-empty string")
        self._check_allow_mime()
        _check_int("Profile", "max_bytes", self.max_bytes, 1)
        _check_int("Profile", "max_pixels", self.max_pixels, 1)
        if not isinstance(self.variants, dict):
            raise _invalid("Profile", "variants", self.variants, "is not a dict of name -> Variant")
        for name, variant in self.variants.items():
            if not (isinstance(name, str) and _NAME.fullmatch(name)):
                raise ConfigurationError(f"Profile.variants key {name!r} {_NAME_RULE}")
            if not isinstance(variant, Variant):
                raise _invalid("Profile", f"variants[{name!r}]", variant, "is not a Variant")
        # a private copy, so the caller's dict changing later cannot change this profile
        force_setattr(self, "variants", {**self.variants, **self._ladder_variants()})
        for flag in ("public", "serve_original"):
            if not isinstance(getattr(self, flag), bool):
                raise _invalid("Profile", flag, getattr(self, flag), "is not a bool")
        _check_int("Profile", "url_ttl", self.url_ttl, 1, MAX_PRESIGN_TTL, _PRESIGN_WHY)
        _check_int("Profile", "upload_ttl", self.upload_ttl, 60, MAX_PRESIGN_TTL, _PRESIGN_WHY)

    def _ladder_variants(self) -> dict[str, Variant]:
        """The ladder's variants by name; ConfigurationError for a bad ladder or a name clash."""
        ladder, formats = self.ladder, self.ladder_formats
        if not isinstance(ladder, (tuple, list)):
            raise _invalid("Profile", "ladder", ladder, "is not a tuple of widths")
        for width in ladder:
            _check_int("Profile", "ladder width", width, 1, MAX_DIMENSION)
        if list(ladder) != sorted(set(ladder)):
            raise _invalid("Profile", "ladder", ladder, "is not in ascending order, each width once")
        if not isinstance(formats, (tuple, list)) or not formats or len(set(formats)) != len(formats):
            raise _invalid("Profile", "ladder_formats", formats, "is not a non-empty tuple of formats, "
                           "each once")
        _check_int("Profile", "ladder_quality", self.ladder_quality, 1, 100)
        force_setattr(self, "ladder", tuple(ladder))
        force_setattr(self, "ladder_formats", tuple(formats))
        rungs = {f"w{width}-{fmt}": Variant(width=width, fit="inside", format=fmt, quality=self.ladder_quality)
                 for width in ladder for fmt in formats}
        for name, rung in rungs.items():
            if self.variants.get(name, rung) != rung:  # the same variant (a profile decoded again) is fine
                raise ConfigurationError(f"Profile {self.name!r}: variant {name!r} is also a rung of its "
                                         "ladder; rename the variant or drop the width from the ladder")
        return rungs

    def ladder_names(self, fmt: str | None = None) -> list[str]:
        """The names of the ladder's variants, narrowest first (of one format, when given).

        fmt: one of ``ladder_formats``, or None for all of them.
        """
        return [f"w{width}-{f}" for width in self.ladder for f in self.ladder_formats if fmt in (None, f)]

    def _check_allow_mime(self) -> None:
        if not isinstance(self.allow_mime, (tuple, list)) or not self.allow_mime:
            raise _invalid("Profile", "allow_mime", self.allow_mime,
                           "is not a non-empty tuple of MIME types")
        for mime in self.allow_mime:
            if not (isinstance(mime, str) and _MIME.fullmatch(mime)):
                raise ConfigurationError(f"Profile.allow_mime entry {mime!r} is not a lowercase "
                                         f"type/subtype MIME type such as 'image/png'")
        duplicates = sorted({m for m in self.allow_mime if self.allow_mime.count(m) > 1})
        if duplicates:
            raise _invalid("Profile", "allow_mime", self.allow_mime,
                           f"lists {', '.join(duplicates)} more than once")
        if isinstance(self.allow_mime, list):  # decoding converts lists; direct construction does not
            force_setattr(self, "allow_mime", tuple(self.allow_mime))

    @functools.cached_property
    def _recipe_digests(self) -> dict[str, str]:
        return {name: recipe_digest(variant) for name, variant in self.variants.items()}

    def recipe_digests(self) -> dict[str, str]:
        """Variant name to its ``recipe_digest``, computed once per profile (a fresh dict each call)."""
        return dict(self._recipe_digests)


def index_profiles(profiles: Iterable[Profile]) -> dict[str, Profile]:
    """Map each profile's name to it, refusing duplicate names.

    profiles: the host's profiles, e.g. ``Rindle(profiles=...)``.
    """
    index: dict[str, Profile] = {}
    for profile in profiles:
        if not isinstance(profile, Profile):
            raise ConfigurationError(f"profiles must hold Profile objects, got {profile!r}")
        if profile.name in index:
            raise ConfigurationError(f"two profiles are named {profile.name!r}; "
                                     f"profile names must be unique")
        index[profile.name] = profile
    return index


def find_profile(profiles: Mapping[str, Profile], name: str) -> Profile:
    """The profile called ``name``, or a ValidationError listing the configured ones.

    profiles: name to profile, as built by ``index_profiles``.
    name: the profile asked for.
    """
    profile = profiles.get(name) if isinstance(name, str) else None
    if profile is None:
        raise ValidationError(f"unknown profile {name!r}; configured profiles: "
                              f"{', '.join(sorted(profiles)) or 'none'}")
    return profile
