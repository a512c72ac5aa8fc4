"""The pyvips calls: header analysis (with the placeholder) and variant rendering.

These functions run inside pool processes (see ``pool.py``): they take and
return plain values and raise :class:`ImageRefused` for input that must be
quarantined or failed, never for a transient problem.

:func:`render_variants` renders all of an image's variants from as few decodes
as quality allows: smaller variants are resized in memory from a larger one's
uncropped frame, at exactly the size a decode of their own would give.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyvips

# absolute: bench/memory.py also imports this file on its own, outside the package
from rindle_async.placeholders import THUMB_SIZE, placeholder

# EXIF orientations 5-8 rotate by 90 or 270 degrees: width and height swap on display.
_SWAPPED = {5, 6, 7, 8}
_SAVERS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif", "gif": ".gif"}
_LARGE = 10_000_000  # a bound "inside" uses for a side left open
# Loaders whose shrink-on-load _frame_size models; for others (TIFF pyramids, HEIF
# thumbnails, Ultra HDR gain maps) every variant is decoded from the original.
_DERIVABLE = {"jpegload", "pngload", "webpload", "gifload"}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a variant's name is its output file's name
# libvips maps a file it opens by name, and every page of it a decode touches counts in this
# process's resident set: the whole original, for a JPEG.  Larger originals are read through
# a callback source instead, which keeps them out of it for about 14% more decode CPU.
_MAPPED_UP_TO = 8 * 2**20


class ImageRefused(Exception):
    """The file is not an image libvips will process within the profile's limits."""

    retryable = False  # the same bytes fail the same way: no second try


def configure(threads: int | None = None) -> None:
    """Pool initializer: no operation cache (it only costs memory here), no risky loaders,
    and exit when the worker that started this process dies.

    threads: libvips worker threads; the pool gives each process its share of the cores
        (with a process per core, one thread each: threads would only contend).
    """
    pyvips.cache_set_max(0)
    if threads is not None:
        pyvips.concurrency_set(threads)
    pyvips.block_untrusted_set(True)
    parent = os.getppid()

    def watch_parent() -> None:
        # a spawned pool process holds both ends of its task pipe, so a parent killed
        # with SIGKILL would leave it waiting forever
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, name="rindle-parent-watch", daemon=True).start()


def _open(path: str, **options: Any) -> pyvips.Image:
    try:
        return pyvips.Image.new_from_file(path, access="sequential", fail_on="warning", **options)
    except pyvips.Error as exc:
        raise ImageRefused(f"libvips cannot read the file: {_first_line(exc, path)}") from None


def _first_line(exc: pyvips.Error, *paths: str) -> str:
    """libvips' message, without the worker's file paths (reasons are shown to users)."""
    text = str(getattr(exc, "detail", "") or exc).strip()
    for path in paths:
        text = text.replace(f'"{path}"', "the file").replace(path, "the file")
    return text.splitlines()[0] if text else "unknown error"


def analyze(path: str, max_pixels: int, max_frames: int = 1000, placeholder: bool = True) -> dict[str, Any]:
    """Read width, height and orientation from the header only, before any decode.

    path: the local copy of the original.
    max_pixels: refuse when width x height (x frames, for an animation) is larger.
    max_frames: refuse an animation of more frames.
    placeholder: compute the placeholder too, from a 1/8-scale decode (promotion asks only when
        no render will decode the image: the renders make it from a frame they decode anyway).
    """
    image = _header(path, max_pixels)
    frames = _frames(image)
    if frames > max_frames:
        raise ImageRefused(f"the animation declares {frames} frames, over the profile's max_frames of "
                           f"{max_frames}; it was not decoded")
    _check_decodable(image)
    display = _display_size(image)
    found = {"width": display[0], "height": display[1], "stored_width": image.width,
             "stored_height": image.height, "orientation": _orientation(image),
             "pages": image.get("n-pages") if image.get_typeof("n-pages") else 1,
             "loader": _loader(image), "image": _safe_metadata(image)}
    return found | ({"placeholder": _placeholder(path)} if placeholder else {})


#: "VALUE (FORMATTED, TYPE, N components, M bytes)": how libvips shows an EXIF field
_EXIF_FIELD = re.compile(r"^(?P<value>.*) \((?P<shown>.*), (?P<type>[A-Za-z]+), \d+ components, \d+ bytes\)$",
                         re.S)
#: the loaders whose several pages are frames of one animation (HEIF's are separate images)
_ANIMATED_LOADERS = {"gifload", "webpload"}


def _exif_text(image: pyvips.Image, field: str) -> str | None:
    """An EXIF ASCII field as text, or None when absent or not text."""
    if not image.get_typeof(field):
        return None
    match = _EXIF_FIELD.match(str(image.get(field)))
    if match is None or match["type"] != "ASCII":
        return None
    return match["value"].strip().strip("\x00").strip() or None


def _captured_at(image: pyvips.Image) -> str | None:
    """DateTimeOriginal (and its offset) as ISO 8601, e.g. "2024-05-01T12:34:56+02:00"."""
    taken = _exif_text(image, "exif-ifd2-DateTimeOriginal")
    found = re.fullmatch(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}:\d{2}:\d{2})", taken or "")
    if found is None:
        return None
    offset = _exif_text(image, "exif-ifd2-OffsetTimeOriginal") or ""
    return f"{found[1]}-{found[2]}-{found[3]}T{found[4]}" + (offset if re.fullmatch(r"[+-]\d{2}:\d{2}", offset)
                                                              else "")


def _safe_metadata(image: pyvips.Image) -> dict[str, Any]:
    """The documented subset of what the file says about itself (docs/security.md): capture
    time, camera make and model, orientation, colour space, alpha, animation and frames.
    Nothing else (GPS, serial numbers, owner names, software) is read out."""
    frames = _frames(image)
    return {"captured_at": _captured_at(image), "camera_make": _exif_text(image, "exif-ifd0-Make"),
            "camera_model": _exif_text(image, "exif-ifd0-Model"), "orientation": _orientation(image),
            "color_space": image.interpretation, "icc_profile": bool(image.get_typeof("icc-profile-data")),
            "has_alpha": bool(image.hasalpha()), "animated": frames > 1, "frames": frames}


def _placeholder_of(image: pyvips.Image) -> dict[str, str] | None:
    """The placeholder of an image already decoded into memory (about a millisecond)."""
    try:
        thumb = image.thumbnail_image(THUMB_SIZE, height=THUMB_SIZE, size="down", no_rotate=True)
        return _placeholder_pixels(thumb)
    except pyvips.Error:
        return None


def _placeholder_pixels(thumb: pyvips.Image) -> dict[str, str]:
    thumb = thumb.colourspace("srgb")
    if not thumb.hasalpha():
        thumb = thumb.bandjoin(255)
    thumb = thumb.cast("uchar")
    pixels = bytes(thumb.write_to_memory())  # a cffi buffer: indexing it gives bytes
    found = placeholder(thumb.width, thumb.height, pixels)
    return {"thumbhash": found.thumbhash, "color": found.color}


def _placeholder(path: str) -> dict[str, str] | None:
    """The placeholder of the image's first frame, upright, from a thumbnail libvips decodes
    with shrink-on-load (JPEG at up to 1/8 scale, WebP and HEIF at the size asked for; PNG
    and GIF stream through in rows); None when even that decode fails (the renders will
    say why)."""
    try:
        # fail_on: a truncated file fails here instead of leaving libvips' warning in its error
        # buffer, where it would be read out with the next real error
        thumb = pyvips.Image.thumbnail(path, THUMB_SIZE, height=THUMB_SIZE, size="down", fail_on="warning")
        return _placeholder_pixels(thumb)
    except pyvips.Error:
        return None


#: the smallest files of each HEIF coding, to ask this build whether it decodes them: an 8 x 8
#: AVIF (libvips' own AV1 encoder) and a 64 x 48 HEIC (libheif 1.23 with x265)
_HEIF_SAMPLES = {
    "av1": (
        "AAAAHGZ0eXBhdmlmAAAAAG1pZjFhdmlmbWlhZgAAANZtZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAA"
        "AAAAACJpbG9jAAAAAERAAAEAAQAAAAAA+gABAAAAAAAAACEAAAAjaWluZgAAAAAAAQAAABVpbmZlAgAAAAABAABhdjAxAAAA"
        "AA5waXRtAAAAAAABAAAAVmlwcnAAAAA4aXBjbwAAAAxhdjFDgQAMAAAAABRpc3BlAAAAAAAAAAgAAAAIAAAAEHBpeGkAAAAA"
        "AwgICAAAABZpcG1hAAAAAAAAAAEAAQOBAgMAAAApbWRhdBIACggYCL9ogIaDQjITHEeHhd3AACwAAJA1jjx+l9dEwA=="
    ),
    "hevc": (
        "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAX1tZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAA"
        "AAAAACJpbG9jAAAAAERAAAEAAQAAAAABoQABAAAAAAAAAB8AAAAjaWluZgAAAAAAAQAAABVpbmZlAgAAAAABAABodmMxAAAA"
        "AA5waXRtAAAAAAABAAAA/WlwcnAAAADdaXBjbwAAAHZodmNDAQNwAAAAkAAAAAAAHvAA/P34+AAADwNgAAEAGEABDAH//wNw"
        "AAADAJAAAAMAAAMAHroCQGEAAQAqQgEBA3AAAAMAkAAAAwAAAwAeoCCBBZbq5Ka5uAhoMCAAAAMDIAAAAwAhYgABAAZEAcFz"
        "wIkAAAATY29scm5jbHgAAQANAAaAAAAAFGlzcGUAAAAAAAAAQAAAAEAAAAAoY2xhcAAAAEAAAAABAAAAMAAAAAEAAAAAAAAA"
        "Av////AAAAACAAAAEHBpeGkAAAAAAwgICAAAABhpcG1hAAAAAAAAAAEAAQWBAgMFhAAAACdtZGF0AAAAGygBrwT4cWTTt/+J"
        "d///85Dey/tNRQ7SfAP2/A=="
    ),
}
_HEIF_NAMES = {"av1": "AVIF (AV1)", "hevc": "HEIC (HEVC)"}
_HEIF_DECODERS = {"av1": "an AV1 decoder plugin (dav1d or aom)", "hevc": "the libde265 HEVC decoder plugin"}


@functools.cache
def heif_decodes(compression: str) -> bool:
    """Whether this libvips build decodes HEIF images of ``compression`` ("av1" or "hevc");
    asked by decoding a tiny sample once per process.

    compression: libvips' ``heif-compression`` of the image.
    """
    sample = _HEIF_SAMPLES.get(compression)
    if sample is None or pyvips.type_find("VipsOperation", "heifload") == 0:
        return False
    try:
        pyvips.Image.new_from_buffer(base64.b64decode(sample), "").avg()
    except pyvips.Error:
        return False
    return True


def input_formats() -> dict[str, bool]:
    """Each input format promotion analyses, and whether this build decodes it (for ``doctor``)."""
    loaders = {"jpeg": "jpegload", "png": "pngload", "webp": "webpload", "gif": "gifload", "tiff": "tiffload",
               "svg": "svgload"}
    found = {name: pyvips.type_find("VipsOperation", loader) != 0 for name, loader in loaders.items()}
    return found | {"avif": heif_decodes("av1"), "heic": heif_decodes("hevc")}


def _check_decodable(image: pyvips.Image) -> None:
    """Refuse a HEIF image whose coding this build cannot decode, naming the missing decoder."""
    if not (_loader(image) or "").startswith("heifload") or not image.get_typeof("heif-compression"):
        return
    compression = image.get("heif-compression")
    if not heif_decodes(compression):
        name = _HEIF_NAMES.get(compression, f"HEIF ({compression})")
        raise ImageRefused(f"this libvips build cannot decode {name} images: its libheif lacks "
                           f"{_HEIF_DECODERS.get(compression, 'a decoder for ' + compression)}; "
                           "install a libvips whose libheif has it, then requeue the asset")


def _header(path: str, max_pixels: int) -> pyvips.Image:
    """The opened, not decoded, image; refused when it declares more than ``max_pixels``."""
    screen = _gif_screen(path)
    if screen is not None:
        _check_pixels(*screen, max_pixels, " (its GIF logical screen)")
    image = _open(path)
    _check_pixels(image.width, image.height, max_pixels)
    frames = _frames(image)
    if frames > 1 and image.width * image.height * frames > max_pixels:
        raise ImageRefused(f"the animation declares {frames} frames of {image.width}x{image.height} = "
                           f"{image.width * image.height * frames} pixels, over the profile's max_pixels of "
                           f"{max_pixels}; it was not decoded")
    return image


def _frames(image: pyvips.Image) -> int:
    """The frames of an animation (GIF, WebP); 1 for any other image (HEIF's pages are separate
    pictures)."""
    pages = image.get("n-pages") if image.get_typeof("n-pages") else 1
    return int(pages) if (_loader(image) or "") in _ANIMATED_LOADERS else 1


def _check_pixels(width: int, height: int, max_pixels: int, what: str = "") -> None:
    if width * height > max_pixels:
        raise ImageRefused(f"the image declares {width}x{height} = {width * height} pixels{what}, "
                           f"over the profile's max_pixels of {max_pixels}; it was not decoded")


def _gif_screen(path: str) -> tuple[int, int] | None:
    """The logical screen a GIF's header declares, or None for other files.

    libvips reports the size of the frames, but a GIF's frames are drawn on its logical
    screen: 43 bytes can declare 65535x65535 around one 1x1 frame.  JPEG (SOF), PNG (IHDR)
    and WebP (the VP8X canvas) headers give libvips the size it reports.
    """
    with open(path, "rb") as file:
        head = file.read(10)
    if len(head) < 10 or head[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")


def render(source: str, dest_dir: str, recipe: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """Render one variant of ``source`` into ``dest_dir``; return the file and its size.

    source: the local copy of the original.
    dest_dir: a directory for the output file (``variant.EXT``).
    recipe: the variant's fields (width, height, fit, format, quality, keep_metadata, background).
    max_pixels: refuse to decode more pixels than this (checked from the header).
    """
    result = render_variants(source, dest_dir, {"variant": recipe}, max_pixels)["variant"]
    if "error" in result:
        raise ImageRefused(result["error"])
    return result


def render_variants(source: str, dest_dir: str, recipes: dict[str, dict[str, Any]],
                    max_pixels: int) -> dict[str, dict[str, Any]]:
    """Render every recipe of ``source`` into ``dest_dir``, decoding the original as few times
    as quality allows.

    Largest frame first.  A variant decoded from the original keeps its frame (resized and
    auto-rotated, not yet cropped or padded) in memory when a smaller variant can be derived
    from it: when the frame is that variant's frame exactly, or, if it was not enlarged from
    the original, at least twice that frame on both axes.  Every other variant is decoded from
    the original with the ``thumbnail`` call :func:`render` always made (except that a cover
    frame others derive from is decoded whole and cropped after).

    source: the local copy of the original.
    dest_dir: a directory for the output files, ``NAME.EXT`` for each variant name.
    recipes: variant name to its fields, as for :func:`render`.
    max_pixels: refuse to decode more pixels than this (checked from the header).
    Returns each name mapped to ``{"path", "width", "height", "byte_size"}``, or to
    ``{"error": reason}`` when that variant alone failed (its resize, crop, pad or saver).
    Raises :class:`ImageRefused` when the source is unreadable, over ``max_pixels`` or fails
    to decode.
    """
    for name in recipes:
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ValueError(f"variant name {name!r} does not match {_NAME.pattern}; "
                             "it names the output file")
    return _render(source, dest_dir, recipes, max_pixels)[0]


def render_job(source: str, dest_dir: str, recipes: dict[str, dict[str, Any]], max_pixels: int,
               placeholder: bool) -> dict[str, Any]:
    """:func:`render_variants`, and, with ``placeholder``, the image's placeholder from a frame
    the renders decoded anyway (a new 1/8-scale decode only when every decode was cropped).

    source: the local copy of the original.
    dest_dir: a directory for the output files.
    recipes: variant name to its fields.
    max_pixels: refuse to decode more pixels than this.
    placeholder: compute the placeholder too (the asset has none yet).
    Returns ``{"variants": <render_variants' result>, "placeholder": {...} or None}``.
    """
    results, whole = _render(source, dest_dir, recipes, max_pixels)
    found = None
    if placeholder:
        found = _placeholder_of(whole) if whole is not None else _placeholder(source)
    return {"variants": results, "placeholder": found}


def _render(source: str, dest_dir: str, recipes: dict[str, dict[str, Any]],
            max_pixels: int) -> tuple[dict[str, dict[str, Any]], pyvips.Image | None]:
    """The renders, and the smallest decoded frame that shows the whole image (None if none does)."""
    header = _header(source, max_pixels)
    frames: dict[str, pyvips.Image] = {}  # decoded frames that smaller variants derive from
    results: dict[str, dict[str, Any]] = {}
    whole: pyvips.Image | None = None
    still = {name: recipe for name, recipe in recipes.items() if not recipe.get("animated")}
    for name in recipes.keys() - still.keys():  # every frame: a decode of their own
        results[name] = _render_animated(source, header, recipes[name], os.path.join(
            dest_dir, name + _SAVERS[recipes[name]["format"]]))
    for step in _plan(source, header, still):
        recipe = still[step.name]
        if step.base is None:
            image = _decode(source, recipe, step.frame if step.keep else None)
            if step.keep:
                frames[step.name] = image
            if (step.keep or recipe["fit"] in ("inside", "contain")) and (
                    whole is None or image.width * image.height < whole.width * whole.height):
                whole = image  # uncropped, undistorted: what the placeholder may be made from
        else:
            image = frames[step.base]
        output = os.path.join(dest_dir, step.name + _SAVERS[recipe["format"]])
        results[step.name] = _write(image, step.frame if step.base else None, recipe, output)
    return {name: results[name] for name in recipes}, whole


@dataclass
class _Step:
    """One variant in render order: its frame size and the variant it is derived from."""

    name: str
    frame: tuple[int, int] | None  # None: not computed, the variant is decoded on its own
    base: str | None = None  # None: decoded from the original
    keep: bool = False  # other variants derive from this one's frame


def _area(frame: tuple[int, int] | None) -> int:
    return frame[0] * frame[1] if frame is not None else 0


def _plan(source: str, header: pyvips.Image, recipes: dict[str, dict[str, Any]]) -> list[_Step]:
    """The render order, largest frame first, and where each variant's pixels come from."""
    if _loader(header) not in _DERIVABLE:
        return [_Step(name, None) for name in recipes]
    sizes = {name: _frame_size(source, header, recipe) for name, recipe in recipes.items()}
    display = _display_size(header)
    steps: list[_Step] = []
    decoded: list[_Step] = []
    for name in sorted(recipes, key=lambda n: -sizes[n][0] * sizes[n][1]):  # stable on ties
        bases = [s for s in decoded if s.frame is not None and _can_derive(s.frame, sizes[name], display)]
        base = min(bases, key=lambda s: _area(s.frame), default=None)
        step = _Step(name, sizes[name], base.name if base else None)
        if base is None:
            decoded.append(step)
        else:
            base.keep = True
        steps.append(step)
    return steps


def _can_derive(frame: tuple[int, int], wanted: tuple[int, int], display: tuple[int, int]) -> bool:
    if frame == wanted:
        return True  # the size a decode for this variant would give: nothing to resample
    if frame[0] > display[0] or frame[1] > display[1]:
        return False  # an enlarged frame holds less detail than the original
    return frame[0] >= 2 * wanted[0] and frame[1] >= 2 * wanted[1]


def _thumbnail_box(recipe: dict[str, Any]) -> tuple[int, int, str, bool]:
    """The ``thumbnail`` width, height, size mode and crop flag a recipe renders with."""
    width, height, fit = recipe["width"], recipe["height"], recipe["fit"]
    if fit == "cover":
        return width, height, "both", True  # may enlarge a small image, as it always did
    if fit == "fill":
        return width, height, "force", False
    return width or _LARGE, height or _LARGE, "down", False  # inside, contain: never enlarge


def _decode(source: str, recipe: dict[str, Any], frame: tuple[int, int] | None) -> pyvips.Image:
    """Decode ``source`` into memory for ``recipe``; with ``frame``, uncropped at that size.

    Into memory, so a decode failure (the source's fault) is told apart from a saver's.
    """
    width, height, size, crop = _thumbnail_box(recipe)
    options: dict[str, Any] = {"height": height, "size": size}
    if crop and frame is None:
        options["crop"] = "centre"
    elif crop and frame is not None:  # smaller variants derive from the whole frame; _write crops this one
        width, options = frame[0], {"height": frame[1], "size": "force"}
    try:
        if os.path.getsize(source) <= _MAPPED_UP_TO:
            return pyvips.Image.thumbnail(source, width, fail_on="warning", **options).copy_memory()
        with open(source, "rb") as file:
            reader = _reader(file)  # held until the decode ends: libvips calls back into it
            # thumbnail_source drops its own fail_on (libvips 8.18): the loader gets it here
            return pyvips.Image.thumbnail_source(reader, width, option_string="fail_on=warning",
                                                 **options).copy_memory()
    except pyvips.Error as exc:
        raise ImageRefused(f"libvips could not decode the image: {_first_line(exc, source)}") from None


def _render_animated(source: str, first: pyvips.Image, recipe: dict[str, Any], output: str) -> dict[str, Any]:
    """An animated variant: every frame resized, then cropped or padded alike, its delays and
    loop kept (a still original gives a one-frame file); ``{"error": ...}`` when it fails.
    ``first`` is the original as the header check opened it (its first frame's size)."""
    width, height, fit = recipe["width"], recipe["height"], recipe["fit"]
    try:
        # every page of an animation; other loaders (PNG, JPEG, ...) know no "n"
        load = f"{source}[n=-1]" if _frames(first) > 1 else source
        if fit == "cover":  # thumbnail's crop would cut the strip of frames, not each frame
            scale = max(width / first.width, height / first.height)
            strip = _all_frames(load, max(width, math.ceil(first.width * scale)), _LARGE, "both")
        elif fit == "fill":
            strip = _all_frames(load, width, height, "force")
        else:
            strip = _all_frames(load, width or _LARGE, height or _LARGE, "down")
        image = _each_frame(strip, recipe) if fit in ("cover", "contain") else strip
        _save(image, output, recipe)
    except pyvips.Error as exc:
        if os.path.exists(output):
            os.remove(output)
        return {"error": f"libvips could not render the animated variant as {recipe['format']}: "
                         f"{_first_line(exc, output)}"}
    page = image.get("page-height") if image.get_typeof("page-height") else image.height
    return {"path": output, "width": image.width, "height": page, "byte_size": os.path.getsize(output)}


def _all_frames(load: str, width: int, height: int, size: str) -> pyvips.Image:
    """Every frame ``load`` names, each resized to fit ``width`` x ``height``, as one strip."""
    image = pyvips.Image.thumbnail(load, width, height=height, size=size, fail_on="warning")
    if not image.get_typeof("page-height"):  # a still image: one frame
        image = image.copy()
        image.set_type(pyvips.GValue.gint_type, "page-height", image.height)
    return image


def _each_frame(strip: pyvips.Image, recipe: dict[str, Any]) -> pyvips.Image:
    """Crop (cover) or pad (contain) every frame of a strip to the recipe's box, as a still is."""
    page = strip.get("page-height")
    frames = [_fit(strip.crop(0, top, strip.width, page), recipe)
              for top in range(0, strip.height - page + 1, page)]
    joined = pyvips.Image.arrayjoin(frames, across=1).copy()
    joined.set_type(pyvips.GValue.gint_type, "page-height", frames[0].height)
    joined.set_type(pyvips.GValue.gint_type, "n-pages", len(frames))
    return joined


def _reader(file: Any) -> pyvips.Source:
    """``file`` as a libvips source that reads it through Python calls."""
    source = pyvips.SourceCustom()
    source.on_read(file.read)
    source.on_seek(file.seek)
    return source


def _write(image: pyvips.Image, frame: tuple[int, int] | None, recipe: dict[str, Any],
           output: str) -> dict[str, Any]:
    """Resize ``image`` to ``frame`` (when given), crop or pad it for the fit, and save it."""
    try:
        if frame is not None and (image.width, image.height) != frame:
            image = image.thumbnail_image(frame[0], height=frame[1], size="force", no_rotate=True)
        image = _fit(image, recipe)
        _save(image, output, recipe)
    except pyvips.Error as exc:
        if os.path.exists(output):
            os.remove(output)  # a saver that failed half way
        return {"error": f"libvips could not render the variant as {recipe['format']}: "
                         f"{_first_line(exc, output)}"}
    return {"path": output, "width": image.width, "height": image.height,
            "byte_size": os.path.getsize(output)}


def _fit(image: pyvips.Image, recipe: dict[str, Any]) -> pyvips.Image:
    """Crop a cover frame to its box, or pad a contain image to its box."""
    width, height, fit = recipe["width"], recipe["height"], recipe["fit"]
    if fit == "cover":
        box = (min(width, image.width), min(height, image.height))  # a small image stays small
        if box != (image.width, image.height):
            image = image.smartcrop(*box, interesting="centre")  # what thumbnail's crop does
    elif fit == "contain" and (image.width, image.height) != (width, height):
        if image.interpretation != "srgb":
            image = image.colourspace("srgb")
        fill = list(recipe["background"]) + ([255] if image.hasalpha() else [])
        image = image.gravity("centre", width, height, extend="background", background=fill)
    return image


def _save(image: pyvips.Image, output: str, recipe: dict[str, Any]) -> None:
    fmt, quality = recipe["format"], recipe["quality"]
    keep = "all" if recipe["keep_metadata"] else "none"
    if fmt == "jpeg" and image.hasalpha():
        image = image.flatten(background=list(recipe["background"]))
    if fmt == "jpeg":
        image.jpegsave(output, Q=quality, keep=keep, optimize_coding=True, interlace=True)
    elif fmt == "webp":
        image.webpsave(output, Q=quality, keep=keep)
    elif fmt == "avif":
        image.heifsave(output, Q=quality, keep=keep, compression="av1")
    elif fmt == "png":
        image.pngsave(output, keep=keep, compression=6)  # lossless: quality does not apply
    else:
        image.gifsave(output, keep=keep)


def _frame_size(source: str, header: pyvips.Image, recipe: dict[str, Any]) -> tuple[int, int]:
    """The size ``thumbnail`` resizes ``source`` to for ``recipe``, auto-rotated, before any crop.

    libvips' own arithmetic (resample/thumbnail.c and resize.c), shrink-on-load included, so
    a variant derived in memory gets exactly the size a decode of its own would give.
    """
    width, height, size, crop = _thumbnail_box(recipe)
    swap = _orientation(header) in _SWAPPED
    box = (height, width) if swap else (width, height)  # thumbnail shrinks, then rotates
    common = min(_shrinks(header.width, header.height, box, size, crop))
    loaded_width, loaded_height = _loaded_size(source, header, common)
    hshrink, vshrink = _shrinks(loaded_width, loaded_height, box, size, crop)
    resized = (max(1, int(loaded_width * (1.0 / hshrink) + 0.5)),
               max(1, int(loaded_height * (1.0 / vshrink) + 0.5)))
    return (resized[1], resized[0]) if swap else resized


def _shrinks(width: int, height: int, box: tuple[int, int], size: str,
             crop: bool) -> tuple[float, float]:
    """Horizontal and vertical shrink factors, as vips_thumbnail_calculate_shrink computes them."""
    hshrink, vshrink = width / box[0], height / box[1]
    if size != "force":
        # cover fills the box (the smaller shrink wins); the others fit inside it (the larger)
        hshrink = vshrink = min(hshrink, vshrink) if crop else max(hshrink, vshrink)
    if size == "down":
        hshrink, vshrink = max(1.0, hshrink), max(1.0, vshrink)
    return min(hshrink, width), min(vshrink, height)


def _loaded_size(source: str, header: pyvips.Image, shrink: float) -> tuple[int, int]:
    """The size shrink-on-load decodes ``source`` at, read from the header it would load."""
    loader = _loader(header)
    if loader == "jpegload":  # thumbnail leaves at least the last x2 to its resize
        options: dict[str, Any] = {"shrink": 8 if shrink >= 16 else 4 if shrink >= 8
                                   else 2 if shrink >= 4 else 1}
    elif loader == "webpload":
        options = {"scale": 1.0 / max(1.0, shrink)}
    else:
        return header.width, header.height
    loaded = _open(source, **options)
    return loaded.width, loaded.height


def _orientation(image: pyvips.Image) -> int:
    return image.get("orientation") if image.get_typeof("orientation") else 1


def _loader(image: pyvips.Image) -> str | None:
    return image.get("vips-loader") if image.get_typeof("vips-loader") else None


def _display_size(header: pyvips.Image) -> tuple[int, int]:
    if _orientation(header) in _SWAPPED:
        return header.height, header.width
    return header.width, header.height
