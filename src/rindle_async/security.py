"""What rindle_async refuses to trust: filenames, storage keys and content types.

The client's filename is only ever a display name (sanitized here); storage keys
are built from server-side ids alone; the type of an upload comes from its bytes
(``sniff``), and the client's declared type and extension are only checked
against it.  Importing this module stays cheap: pyvips loads on the first sniff.
"""

from __future__ import annotations

import functools
import mimetypes
import re
import unicodedata
from collections.abc import Iterable

from .errors import ValidationError

__all__ = [
    "SNIFF_BYTES",
    "check_declared_type",
    "check_extension",
    "extension_for",
    "known_type",
    "sanitize_filename",
    "sniff",
]

#: How many leading bytes callers should pass to ``sniff`` when the file has them.
SNIFF_BYTES = 8192
_SNIFF_LIMIT = 64 * 1024  # more never changes the answer, and keeps detection cheap

# --- filenames ---------------------------------------------------------------------------

_FALLBACK_FILENAME = "file"
# "/" and "\\" (NFKC makes them of U+FF0F, U+FF3C, U+FE68), and the slash look-alikes NFKC
# leaves alone but best-fit code pages and some tools map to "/" or "\\".
_SEPARATORS = re.compile("[/\\\\\u2044\u2215\u2216\u2571\u2572\u27cb\u27cd\u29f5\u29f8\u29f9]")
_WHITESPACE = re.compile(r"\s+")
# Bidi embeddings, overrides and isolates, marks, and the BOM: invisible, and able to
# make "exe.\u202egnp" display as "exe.png".
_INVISIBLE = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                       "\u2066\u2067\u2068\u2069\ufeff")
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, lone surrogates, U+2028/9
_RESERVED_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"]
)
_MAX_EXTENSION_CHARS = 16


def sanitize_filename(name: str | None, *, max_length: int = 255) -> str:
    """The display filename stored in rows and sent in Content-Disposition.

    Drops control, line-separator and bidi characters, NFKC-normalizes (so compatibility
    characters such as fullwidth dots and solidi, "\uff0e\uff0e\uff0f", become the "../"
    they stand for), keeps only the last path component (slash look-alikes such as U+2215
    separate components too), collapses whitespace, strips leading and trailing dots and
    spaces, prefixes Windows device names (``CON.txt`` -> ``_CON.txt``) and truncates to
    ``max_length`` UTF-8 bytes, keeping the extension when it fits.  The result is its own
    NFKC form, so no later normalisation can turn it into a path.  Never raises for odd
    input; an empty result becomes ``"file"``.

    name: the client's filename (any string, or None).
    max_length: the largest result in UTF-8 bytes, at least 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length!r}")
    if name is None:
        text = ""
    elif isinstance(name, (bytes, bytearray)):
        text = bytes(name).decode("utf-8", errors="replace")
    else:
        text = str(name)
    # Dropped before normalizing, so what they separated is composed too ("e\u200e\u0301").
    text = "".join(ch for ch in text if ch not in _INVISIBLE
                   and unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = unicodedata.normalize("NFKC", text)
    components = [part for part in _SEPARATORS.split(text) if part]
    text = components[-1] if components else ""
    text = _WHITESPACE.sub(" ", text).strip(". ")
    result = _fit(text, max_length)
    if _is_reserved_device(result):  # checked after cutting: "CONSOLE.txt" may become "CON.txt"
        result = _fit("_" + result, max_length)
    return result or _FALLBACK_FILENAME[:max_length]


def _split_extension(text: str) -> tuple[str, str]:
    stem, dot, extension = text.rpartition(".")
    stem = stem.rstrip(". ")  # "a..png" is "a.png", as the cut stem of a long name would be
    if dot and stem and 0 < len(extension) <= _MAX_EXTENSION_CHARS and extension.isalnum():
        return stem, "." + extension
    return text, ""


def _fit(text: str, max_bytes: int) -> str:
    """text within max_bytes, cutting the stem (never inside a character) to keep the extension."""
    stem, extension = _split_extension(text)
    room = max_bytes - len(extension.encode("utf-8"))
    if room < 1:  # no room for a stem: cut the whole name instead
        stem, extension, room = text, "", max_bytes
    encoded = stem.encode("utf-8")
    if len(encoded) <= room:
        return stem + extension
    cut = encoded[:room].decode("utf-8", errors="ignore").rstrip(". ")
    # Once more, so the result splits the same way when sanitized again ("0..0" -> "0.0").
    return _fit(cut + extension, max_bytes) if cut else ""


def _is_reserved_device(name: str) -> bool:
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED_DEVICES


# --- content types -----------------------------------------------------------------------

# libvips loader (class name or nickname, reduced to its format word) -> MIME type;
# "heif" is refined from the ftyp brands; "svg" is left to sniff's own check.
_LOADER_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "uhdr": "image/jpeg",  # Ultra HDR: a JPEG with a gain map
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "nsgif": "image/gif",
    "tiff": "image/tiff",
    "heif": "image/heic",
    "jxl": "image/jxl",
    "jp2k": "image/jp2",
    "pdf": "application/pdf",
    "pdfium": "application/pdf",
    "poppler": "application/pdf",
}
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"miaf"})
_GZIP = b"\x1f\x8b"  # svgz
# Optional BOM and XML prolog (declaration, comments, doctype with internal subset), then <svg.
# Atomic groups: a comment never re-matches past its own "-->", so no catastrophic backtracking.
_SVG = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*+"
    rb"(?>(?><!--.*?-->|<!DOCTYPE[^\[>]*+(?:\[[^\]]*+\])?\s*+>|<\?.*?\?>)\s*+)*+"
    rb"<svg[\s>/]",
    re.DOTALL,
)


def sniff(head: bytes) -> str | None:
    """The MIME type named by a file's first bytes, or None when unknown.

    Images are detected by libvips' own loader detection (so "image/png" means libvips
    would load it with its PNG loader), AVIF and HEIC told apart by their ftyp brands,
    SVG by a check of its own (libvips hides SVG when untrusted loaders are blocked, and
    takes HTML with inline SVG for SVG), and everything else by puremagic.

    head: the first bytes of the file; pass ``SNIFF_BYTES`` (or the whole file when shorter).
    """
    data = bytes(head[:_SNIFF_LIMIT])
    if not data:
        return None
    loader = _vips_loader(data)
    if loader == "heif":
        return _heif_type(data) or _LOADER_TYPES["heif"]
    if loader in _LOADER_TYPES:
        return _LOADER_TYPES[loader]
    if heif := _heif_type(data):
        return heif
    # libvips calls any text with "<svg" near its start SVG, HTML pages included.
    if _SVG.match(data) or (loader == "svg" and data.startswith(_GZIP)):
        return "image/svg+xml"
    return _puremagic_type(data)


def _vips_loader(data: bytes) -> str | None:
    """The format word of the libvips loader that would open ``data``, or None."""
    try:
        from pyvips import ffi, vips_lib
    except (ImportError, OSError):  # no libvips here: the other signals still work
        return None
    # pyvips 3.2 has no wrapper for this, only the raw C call new_from_buffer makes.
    # Freezing keeps the expected "not in a known format" out of libvips' error buffer.
    vips_lib.vips_error_freeze()
    try:
        pointer = vips_lib.vips_foreign_find_load_buffer(data, len(data))
    finally:
        vips_lib.vips_error_thaw()
    if pointer == ffi.NULL:
        return None
    return _loader_format(ffi.string(pointer).decode("ascii", errors="replace"))


@functools.cache
def _loader_format(loader: str) -> str:
    """Reduce a loader's class name or nickname to its format word, e.g. "jpeg"."""
    name = loader.removeprefix("VipsForeignLoad").removesuffix("Buffer")
    return name.removesuffix("_buffer").removesuffix("load").lower()


def _heif_type(data: bytes) -> str | None:
    """image/avif or image/heic from an ISO-BMFF ftyp box, None for other files."""
    if data[4:8] != b"ftyp":
        return None
    size = min(int.from_bytes(data[:4], "big"), len(data))
    major = data[8:12]
    compatible = {data[i:i + 4] for i in range(16, size - 3, 4)}
    if major in _AVIF_BRANDS:
        return "image/avif"
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major in _HEIF_GENERIC_BRANDS:
        return "image/avif" if compatible & _AVIF_BRANDS else "image/heic"
    return None


def _puremagic_type(data: bytes) -> str | None:
    import puremagic

    try:
        matches = puremagic.magic_string(data)
    except (puremagic.PureError, ValueError):
        return None
    best = max((m.confidence for m in matches), default=0.0)
    tied = [m.mime_type for m in matches if m.confidence == best and m.mime_type]
    if not tied or tied[0] == "application/octet-stream":
        return None
    # A zip head cannot tell a .docx from a .jar from a plain archive: say zip.
    if len(set(tied)) > 1 and "application/zip" in tied:
        return "application/zip"
    return str(tied[0])


# --- extensions --------------------------------------------------------------------------

_EXTENSIONS: dict[str, str] = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/heic": "heic",
    "image/tiff": "tiff",
    "image/svg+xml": "svg",
    "application/pdf": "pdf",
}
# Filename extension -> the types it may hold, the one it names first.
_EXTENSION_TYPES: dict[str, tuple[str, ...]] = {
    **{ext: ("image/jpeg",) for ext in ("jpg", "jpeg", "jpe", "jfif", "pjpeg", "pjp")},
    "png": ("image/png",),
    "apng": ("image/apng", "image/png"),
    "webp": ("image/webp",),
    "gif": ("image/gif",),
    "avif": ("image/avif",),
    "heic": ("image/heic", "image/heif"),
    "heif": ("image/heif", "image/heic", "image/avif"),  # AVIF is a HEIF profile
    "hif": ("image/heif", "image/heic", "image/avif"),
    "tif": ("image/tiff",),
    "tiff": ("image/tiff",),
    "svg": ("image/svg+xml",),
    "pdf": ("application/pdf",),
}
_GENERIC_TYPES = frozenset({"application/octet-stream"})
_ZIP_BASED = ("application/vnd.openxmlformats-", "application/vnd.oasis.opendocument.",
              "application/java-archive", "application/vnd.ms-")


@functools.cache
def _mimetypes() -> mimetypes.MimeTypes:
    return mimetypes.MimeTypes()  # Python's built-in table only, not this machine's files


def extension_for(mime: str) -> str | None:
    """The canonical file extension (no dot) for a MIME type, or None when unknown.

    mime: a type as returned by ``sniff``, e.g. "image/jpeg" -> "jpg".
    """
    if mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    guessed = _mimetypes().guess_extension(mime)
    return guessed.removeprefix(".") if guessed else None


def check_extension(filename: str, mime: str, *, declared: bool = False) -> None:
    """Refuse a filename whose extension names a different known type than the bytes.

    The extension is read from the name as :func:`sanitize_filename` stores it (so
    "cat\uff0ejpg" names a JPEG).  A missing or unknown extension is accepted; comparison
    is case-insensitive.

    filename: the client's filename.
    mime: the type sniffed from the bytes, or the declared one before any bytes exist.
    declared: ``mime`` is the client's declared type (the message says so).
    """
    stem, dot, extension = sanitize_filename(filename).rpartition(".")
    if not (dot and stem.strip(". ")):
        return
    extension = extension.strip().lower()
    named = _EXTENSION_TYPES.get(extension)
    if named is None:
        guessed = _mimetypes().types_map[True].get("." + extension)
        named = (guessed,) if guessed and guessed not in _GENERIC_TYPES else ()
    if not named or mime in named:
        return
    if mime == "application/zip" and any(t.startswith(_ZIP_BASED) or t.endswith("+zip")
                                          for t in named):
        return
    claim = "the declared type is" if declared else "the bytes are"
    raise ValidationError(f"filename {filename!r} says {named[0]} but {claim} {mime}")


def type_for_filename(filename: str | None) -> str | None:
    """The type a filename's extension names (the first, when it names several), or None.

    filename: the client's filename, read as :func:`sanitize_filename` stores it.
    """
    stem, dot, extension = sanitize_filename(filename).rpartition(".")
    if not (dot and stem.strip(". ")):
        return None
    extension = extension.strip().lower()
    named = _EXTENSION_TYPES.get(extension)
    if named:
        return named[0]
    guessed = _mimetypes().types_map[True].get("." + extension)
    return guessed if guessed and guessed not in _GENERIC_TYPES else None


# --- declared types ----------------------------------------------------------------------


#: What a client declares when it does not know the type: browsers send it for iPhone photos
#: (HEIC).  Accepted by every profile; the sniffed type is then the only one checked.
UNKNOWN_TYPE = "application/octet-stream"


def known_type(declared: str) -> str | None:
    """A declared type, or None when the client said it does not know (``UNKNOWN_TYPE``).

    declared: what ``check_declared_type`` returned.
    """
    return None if declared == UNKNOWN_TYPE else declared


def check_declared_type(declared: str | None, allow_mime: Iterable[str], *, profile: str) -> str:
    """Normalize a client-declared Content-Type and refuse it unless the profile allows it.

    Lowercases it and drops parameters (``"image/PNG; charset=x"`` -> ``"image/png"``).
    ``application/octet-stream`` (``UNKNOWN_TYPE``) is always accepted: the bytes decide.

    declared: the Content-Type the client sent, or None.
    allow_mime: the profile's accepted types.
    profile: the profile name, for the message.
    """
    allowed = [m.strip().lower() for m in allow_mime]
    normalized = declared.split(";", 1)[0].strip().lower() if isinstance(declared, str) else ""
    listing = ", ".join(allowed)
    if not normalized:
        raise ValidationError(f"content type is missing for profile {profile}; "
                              f"send one of: {listing}")
    if normalized == UNKNOWN_TYPE:
        return UNKNOWN_TYPE  # the client does not know: the bytes decide, as they always do
    if normalized not in allowed:
        shown = normalized if len(normalized) <= 100 else normalized[:100] + "..."
        raise ValidationError(f"content type {shown!r} is not allowed for profile {profile}; "
                              f"allowed: {listing}")
    return normalized
