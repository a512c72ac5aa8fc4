"""The pyvips calls: header analysis and variant rendering.

These functions run inside pool processes (see ``pool.py``): they take and
return plain values and raise :class:`ImageRefused` for input that must be
quarantined or failed, never for a transient problem.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pyvips

# EXIF orientations 5-8 rotate by 90 or 270 degrees: width and height swap on display.
_SWAPPED = {5, 6, 7, 8}
_SAVERS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif", "gif": ".gif"}
_LARGE = 10_000_000  # a bound "inside" uses for a side left open


class ImageRefused(Exception):
    """The file is not an image libvips will process within the profile's limits."""

    retryable = False  # the same bytes fail the same way: no second try


def configure() -> None:
    """Pool initializer: no operation cache (it only costs memory here), no risky loaders,
    and exit when the worker that started this process dies."""
    pyvips.cache_set_max(0)
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
        raise ImageRefused(f"libvips cannot read the file: {_first_line(exc)}") from None


def _first_line(exc: pyvips.Error) -> str:
    text = str(getattr(exc, "detail", "") or exc).strip()
    return text.splitlines()[0] if text else "unknown error"


def analyze(path: str, max_pixels: int) -> dict[str, Any]:
    """Read width, height and orientation from the header only, before any decode.

    path: the local copy of the original.
    max_pixels: refuse when width x height is larger.
    """
    image = _open(path)
    width, height = image.width, image.height
    pages = image.get("n-pages") if image.get_typeof("n-pages") else 1
    if width * height > max_pixels:
        raise ImageRefused(f"the image declares {width}x{height} = {width * height} pixels, over "
                           f"the profile's max_pixels of {max_pixels}; it was not decoded")
    orientation = image.get("orientation") if image.get_typeof("orientation") else 1
    display = (height, width) if orientation in _SWAPPED else (width, height)
    return {"width": display[0], "height": display[1], "stored_width": width,
            "stored_height": height, "orientation": orientation, "pages": pages,
            "loader": image.get("vips-loader") if image.get_typeof("vips-loader") else None}


def render(source: str, dest_dir: str, recipe: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """Render one variant of ``source`` into ``dest_dir``; return the file and its size.

    source: the local copy of the original.
    dest_dir: a directory for the output file.
    recipe: the variant's fields (width, height, fit, format, quality, keep_metadata, background).
    max_pixels: refuse to decode more pixels than this (checked from the header).
    """
    header = _open(source)
    if header.width * header.height > max_pixels:
        raise ImageRefused(f"the image declares {header.width}x{header.height} pixels, over "
                           f"max_pixels {max_pixels}")
    width, height, fit = recipe["width"], recipe["height"], recipe["fit"]
    options: dict[str, Any] = {"fail_on": "warning"}
    if fit == "cover":
        options.update(height=height, crop="centre")
    elif fit == "fill":
        options.update(height=height, size="force")
    else:  # inside and contain fit within the box, never enlarging
        options.update(height=height or _LARGE, size="down")
    try:
        image = pyvips.Image.thumbnail(source, width or _LARGE, **options)
        if fit == "contain" and (image.width, image.height) != (width, height):
            if image.interpretation != "srgb":
                image = image.colourspace("srgb")
            fill = list(recipe["background"]) + ([255] if image.hasalpha() else [])
            image = image.gravity("centre", width, height, extend="background", background=fill)
        output = os.path.join(dest_dir, "variant" + _SAVERS[recipe["format"]])
        _save(image, output, recipe)
    except pyvips.Error as exc:
        raise ImageRefused(f"libvips could not render the variant: {_first_line(exc)}") from None
    return {"path": output, "width": image.width, "height": image.height,
            "byte_size": os.path.getsize(output)}


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


def render_variants(source: str, dest_dir: str, recipes: dict[str, dict[str, Any]],
                    max_pixels: int) -> dict[str, dict[str, Any]]:
    """Render several variants of ``source``; name -> output, or {"error": ...} for one that failed.

    (Provisional: one decode per variant; replaced by the decode-once renderer.)
    """
    results: dict[str, dict[str, Any]] = {}
    for name, recipe in recipes.items():
        folder = os.path.join(dest_dir, name)
        os.makedirs(folder, exist_ok=True)
        results[name] = render(source, folder, recipe, max_pixels)
    return results
