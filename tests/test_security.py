"""Filenames, storage keys and type sniffing (no services; real libvips)."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess
import sys
import unicodedata
import uuid
import zipfile

import pytest
import pyvips
from hypothesis import given, settings
from hypothesis import strategies as st

from rindle_async.errors import ValidationError
from rindle_async.security import (
    check_declared_type,
    check_extension,
    extension_for,
    sanitize_filename,
    sniff,
)
from rindle_async.storage.keys import asset_id_of, asset_prefix, is_upload_key, new_storage_key, variant_key

ASSET_ID = "3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
SVG_WITH_PROLOG = (b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n'
                   b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" [<!ENTITY a "b">]>\n'
                   b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')


# --- sanitize_filename -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("photo.jpg", "photo.jpg"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Windows\\x.exe", "x.exe"),
    ("a\r\nSet-Cookie: x.png", "aSet-Cookie: x.png"),
    ("evil\x00.png.exe", "evil.png.exe"),
    ("exe.\u202egnp", "exe.gnp"),
    ("a\u2028b\u2029c\u2066d\u2069.jpg", "abcd.jpg"),
    ("CON.txt", "_CON.txt"),
    ("con", "_con"),
    ("Lpt9.tar.gz", "_Lpt9.tar.gz"),
    ("COM1 .txt", "_COM1.txt"),
    ("CONSOLE.txt", "CONSOLE.txt"),
    ("..", "file"),
    ("   ", "file"),
    ("", "file"),
    (None, "file"),
    ("\x00////", "file"),
    ("photos/", "photos"),
    ("a..png", "a.png"),
    ("  ..hidden name.. ", "hidden name"),
    ("my   holiday\u3000photo.png", "my holiday photo.png"),
    ("e\u0301te\u0301.png", "\u00e9t\u00e9.png"),  # NFC
    ("caf\u00e9.JPG", "caf\u00e9.JPG"),
])
def test_sanitize_filename_hostile_names(name: str | None, expected: str) -> None:
    assert sanitize_filename(name) == expected


# Compatibility characters that NFKC (what a later normalisation, a file system or a best-fit
# code page may apply) turns into dots and separators, and slash look-alikes that it leaves.
@pytest.mark.parametrize(("name", "expected"), [
    ("\uff0e\uff0e\uff0fx.jpg", "x.jpg"),  # fullwidth "../x.jpg"
    ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fetc\uff0fpasswd", "passwd"),
    ("..\uff3c..\uff3cboot.ini", "boot.ini"),  # fullwidth reverse solidus
    ("..\ufe68x.png", "x.png"),  # small reverse solidus
    ("\ufe52\ufe52/x.png", "x.png"),  # small full stops
    ("\u2025/x.png", "x.png"),  # two dot leader
    ("..\u2215..\u2215etc\u2215passwd", "passwd"),  # division slash
    ("..\u2044x.jpg", "x.jpg"),  # fraction slash
    ("..\u29f8x.jpg", "x.jpg"),  # big solidus
    ("a\u29f5b\u2216c.png", "c.png"),  # reverse solidus operator, set minus
    ("\uff0e\uff0e", "file"),
    ("\u2215", "file"),
    ("\uff50\uff48\uff4f\uff54\uff4f\uff0e\uff4a\uff50\uff47", "photo.jpg"),  # fullwidth letters
    ("\uff23\uff2f\uff2e.txt", "_CON.txt"),  # a device name once normalised
    ("\ufb01le.png", "file.png"),  # the "fi" ligature
])
def test_sanitize_filename_neutralises_compatibility_characters(name: str, expected: str) -> None:
    result = sanitize_filename(name)
    assert result == expected
    assert unicodedata.normalize("NFKC", result) == result


def test_sanitize_filename_truncates_multibyte_names_in_bytes_keeping_the_extension() -> None:
    name = "\u65e5" * 133 + ".png"  # 403 bytes: 3 bytes per character
    assert len(name.encode("utf-8")) > 400

    result = sanitize_filename(name)

    assert result == "\u65e5" * 83 + ".png"  # 249 + 4 bytes: an 84th character would not fit
    assert len(result.encode("utf-8")) <= 255
    assert result.encode("utf-8").decode("utf-8") == result


@pytest.mark.parametrize(("name", "max_length", "expected"), [
    ("abcdef.png", 5, "a.png"),
    ("abcdef.png", 4, "abcd"),  # no room for the extension: the whole name is cut
    ("CONSOLE.txt", 7, "_CO.txt"),  # cut to "CON.txt", a device name, so renamed
    ("\u00e9", 1, "f"),  # half a character is no character
    ("x" * 300, 255, "x" * 255),
    ("0..000", 4, "0.0"),  # cut to "0..0", then settled so sanitizing again changes nothing
])
def test_sanitize_filename_max_length(name: str, max_length: int, expected: str) -> None:
    assert sanitize_filename(name, max_length=max_length) == expected


@pytest.mark.parametrize("odd", [b"bytes.png", 12, "\ud800lone-surrogate.png"])
def test_sanitize_filename_never_raises_for_odd_input(odd: object) -> None:
    result = sanitize_filename(odd)  # type: ignore[arg-type]
    assert result and result.encode("utf-8")


_HOSTILE_PIECES = ["..", ".", "/", "\\", " ", "\t", "\r\n", "\x00", "\x7f", "\x85", "\u202e",
                   "\u2066", "\u2028", "\ufeff", "\u3000", "CON", "com1", "LPT\u00b9", ".txt",
                   ".png", "\u65e5\u672c", "\u00e9", "e\u0301", "\u0301", "\U0001f600", "\ud800", "a",
                   "\uff0e", "\uff0f", "\uff3c", "\u2024", "\u2025", "\ufe52", "\ufe68", "\u2044",
                   "\u2215", "\u29f8", "\u29f5", "\uff23\uff2f\uff2e", "\ufb01"]
_SLASH_LIKE = "/\\\u2044\u2215\u2216\u2571\u2572\u27cb\u27cd\u29f5\u29f8\u29f9"
_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{p}{n}" for p in ("COM", "LPT") for n in "123456789")}
_FILENAMES = st.one_of(
    st.text(st.characters(exclude_categories=())),
    st.lists(st.sampled_from(_HOSTILE_PIECES), max_size=80).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(name=_FILENAMES, max_length=st.integers(min_value=1, max_value=300))
def test_sanitize_filename_is_always_a_safe_display_name(name: str, max_length: int) -> None:
    result = sanitize_filename(name, max_length=max_length)

    assert isinstance(result, str) and result
    assert "/" not in result and "\\" not in result
    normalized = unicodedata.normalize("NFKC", result)
    assert normalized == result  # no later normalisation can turn it into a path
    assert not any(ch in _SLASH_LIKE for ch in result)
    assert not any(unicodedata.category(ch) in {"Cc", "Cs", "Zl", "Zp"} for ch in result)
    assert not any("\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069" for ch in result)
    assert len(result.encode("utf-8")) <= max_length
    assert result[0] not in ". " and result[-1] not in ". "
    assert result.split(".", 1)[0].rstrip(" ").upper() not in _DEVICES
    assert sanitize_filename(result, max_length=max_length) == result


# --- storage keys ------------------------------------------------------------------------

def test_new_storage_key_format() -> None:
    assert new_storage_key("avatar", ASSET_ID, "png") == f"avatar/3f/{ASSET_ID}/original.png"
    assert new_storage_key("avatar", uuid.UUID(ASSET_ID), "jpg") == f"avatar/3f/{ASSET_ID}/original.jpg"


@pytest.mark.parametrize("extension", [None, "", "PNG", ".png", "png/../../x", "p n g", "abcdefghijk"])
def test_new_storage_key_drops_an_invalid_extension(extension: str | None) -> None:
    assert new_storage_key("avatar", ASSET_ID, extension) == f"avatar/3f/{ASSET_ID}/original"


def test_variant_key_format() -> None:
    key = variant_key("avatar", ASSET_ID, "thumb", "0123456789abcdef0123", "webp")
    assert key == f"avatar/3f/{ASSET_ID}/variants/thumb-0123456789abcdef0123.webp"


@pytest.mark.parametrize("profile", ["", "Avatar", "../x", "a/b", "-avatar", "a" * 64, None])
def test_keys_refuse_bad_profile_names(profile: object) -> None:
    with pytest.raises(ValueError, match="profile name"):
        new_storage_key(profile, ASSET_ID, "png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="profile name"):
        variant_key(profile, ASSET_ID, "thumb", "0123456789abcdef0123", "webp")  # type: ignore[arg-type]


@pytest.mark.parametrize("asset_id", ["", "../../etc", "not-a-uuid", ASSET_ID.upper(),
                                      ASSET_ID.replace("-", ""), "{" + ASSET_ID + "}", 42])
def test_keys_refuse_non_canonical_asset_ids(asset_id: object) -> None:
    with pytest.raises(ValueError, match="asset id"):
        new_storage_key("avatar", asset_id, "png")  # type: ignore[arg-type]


@pytest.mark.parametrize(("variant", "digest", "extension", "what"), [
    ("../thumb", "0123456789abcdef0123", "webp", "variant name"),
    ("Thumb", "0123456789abcdef0123", "webp", "variant name"),
    ("thumb", "../../x", "webp", "recipe digest"),
    ("thumb", "ABCDEF0123", "webp", "recipe digest"),
    ("thumb", "0123456789abcdef0123", "", "variant extension"),
    ("thumb", "0123456789abcdef0123", ".webp", "variant extension"),
    ("thumb", "0123456789abcdef0123", None, "variant extension"),
])
def test_variant_key_refuses_bad_parts(variant: str, digest: str, extension: str, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        variant_key("avatar", ASSET_ID, variant, digest, extension)


def test_every_key_of_an_asset_parses_back_to_it_and_shares_its_prefix() -> None:
    built = [new_storage_key("avatar", ASSET_ID, "png"), new_storage_key("avatar", ASSET_ID, "png", role="upload"),
             variant_key("avatar", ASSET_ID, "thumb", "0123456789abcdef0123", "webp")]
    assert {asset_id_of(key) for key in built} == {uuid.UUID(ASSET_ID)}
    assert all(key.startswith(asset_prefix(built[0])) for key in built)
    assert [is_upload_key(key) for key in built] == [False, True, False]
    assert asset_id_of("avatar/3f/not-a-uuid/original.png") is None
    assert asset_id_of("stray.txt") is None and asset_id_of(f"avatar/3f/{ASSET_ID}") is None


# --- sniffing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "mime"), [
    (".jpg", "image/jpeg"), (".png", "image/png"), (".webp", "image/webp"),
    (".gif", "image/gif"), (".avif", "image/avif"), (".tif", "image/tiff"),
])
def test_sniff_images_written_by_libvips(suffix: str, mime: str) -> None:
    data = pyvips.Image.black(8, 8).write_to_buffer(suffix)
    assert sniff(data) == mime
    assert sniff(data[:100]) == mime  # sniffing needs the head only


def test_sniff_truncated_jpeg_is_still_jpeg() -> None:
    data = pyvips.Image.black(64, 64).write_to_buffer(".jpg")
    assert sniff(data[:100]) == "image/jpeg"


def test_sniff_tiff_from_its_head_when_libvips_needs_the_whole_file() -> None:
    data = pyvips.Image.black(300, 300, bands=3).write_to_buffer(".tif")
    assert sniff(data[:4096]) == "image/tiff"


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (len(box) + 4).to_bytes(4, "big") + box + b"\x00" * 4000


@pytest.mark.parametrize(("head", "mime"), [
    (_ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    (_ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),
    (_ftyp(b"mif1", b"mif1", b"avif"), "image/avif"),
    (_ftyp(b"avis", b"avis", b"msf1"), "image/avif"),
    (_ftyp(b"mp42", b"mp42", b"isom"), "video/mp4"),
])
def test_sniff_iso_bmff_brands(head: bytes, mime: str) -> None:
    assert sniff(head) == mime


@pytest.mark.parametrize("data", [SVG, SVG_WITH_PROLOG, b"\n  " + SVG])
def test_sniff_svg(data: bytes) -> None:
    assert sniff(data) == "image/svg+xml"


def test_sniff_svg_when_libvips_blocks_untrusted_loaders() -> None:
    # block_untrusted_set is process-wide and has no getter: try it in a fresh process.
    code = ("import pyvips, sys; from rindle_async.security import sniff, _vips_loader; "
            "pyvips.block_untrusted_set(True); data = sys.stdin.buffer.read(); "
            "print(_vips_loader(data), sniff(data))")
    done = subprocess.run([sys.executable, "-c", code], input=SVG, capture_output=True,
                          check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.split() == [b"None", b"image/svg+xml"]


def test_sniff_gzipped_svg() -> None:
    assert sniff(gzip.compress(SVG)) == "image/svg+xml"


def test_sniff_html_with_inline_svg_is_not_svg() -> None:
    # libvips' loader detection alone calls this SVG
    assert sniff(b"<!doctype html><html><body><svg></svg></body></html>") == "text/html"


def test_sniff_a_hostile_xml_prolog_does_not_backtrack() -> None:
    # thousands of empty comments and no <svg: a naive pattern backtracks 2**n ways here
    assert sniff(b"<!---->" * 5000 + b"<x/>") != "image/svg+xml"


def test_sniff_other_types_through_puremagic() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")

    assert sniff(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n") == "application/pdf"
    assert sniff(buffer.getvalue()) == "application/zip"


@pytest.mark.parametrize("data", [b"", b"plain text, nothing magic about it\n",
                                  random.Random(7).randbytes(4096)])
def test_sniff_unknown_bytes_is_none(data: bytes) -> None:
    assert sniff(data) is None


def test_sniff_leaves_no_libvips_error_behind() -> None:
    sniff(b"not an image at all")
    with pytest.raises(pyvips.Error) as caught:
        pyvips.Image.new_from_buffer(b"\x00\x01", "")
    assert caught.value.detail.count("not in a known format") == 1


# --- extensions --------------------------------------------------------------------------

@pytest.mark.parametrize(("mime", "extension"), [
    ("image/jpeg", "jpg"), ("image/png", "png"), ("image/webp", "webp"), ("image/gif", "gif"),
    ("image/avif", "avif"), ("image/heic", "heic"), ("image/tiff", "tiff"),
    ("image/svg+xml", "svg"), ("application/pdf", "pdf"), ("video/mp4", "mp4"),
    ("application/x-no-such-type", None),
])
def test_extension_for(mime: str, extension: str | None) -> None:
    assert extension_for(mime) == extension


def test_check_extension_refuses_png_bytes_named_jpg() -> None:
    png = pyvips.Image.black(8, 8).write_to_buffer(".png")
    mime = sniff(png)
    assert mime == "image/png"
    with pytest.raises(ValidationError) as caught:
        check_extension("cat.jpg", mime)
    assert str(caught.value) == "filename 'cat.jpg' says image/jpeg but the bytes are image/png"


@pytest.mark.parametrize(("filename", "mime"), [
    ("cat.gif", "image/png"),
    ("cat.PNG", "image/jpeg"),
    ("notes.txt", "image/png"),
    ("photo.heic", "image/avif"),
    ("folder.png/cat.jpg", "image/png"),
    ("cat\uff0ejpg", "image/png"),  # the extension the stored (normalised) name shows
])
def test_check_extension_refuses_a_different_known_type(filename: str, mime: str) -> None:
    with pytest.raises(ValidationError, match="but the bytes are"):
        check_extension(filename, mime)


@pytest.mark.parametrize(("filename", "mime"), [
    ("cat.png", "image/png"),
    ("CAT.JPG", "image/jpeg"),
    ("cat.jpeg", "image/jpeg"),
    ("cat.jpe", "image/jpeg"),
    ("cat.jfif", "image/jpeg"),
    ("cat.tif", "image/tiff"),
    ("cat.heif", "image/avif"),
    ("cat", "image/png"),
    (".png", "image/jpeg"),  # a dotfile, no extension
    ("cat.xyz123", "image/png"),
    ("cat.bin", "image/png"),
    ("cat.png ", "image/png"),
    ("folder.jpg/cat.png", "image/png"),
])
def test_check_extension_accepts_matching_missing_or_unknown(filename: str, mime: str) -> None:
    check_extension(filename, mime)


# --- declared types ----------------------------------------------------------------------

@pytest.mark.parametrize(("declared", "expected"), [
    ("image/png", "image/png"),
    ("IMAGE/PNG", "image/png"),
    (" image/jpeg ; charset=binary", "image/jpeg"),
    ("image/png;foo=bar", "image/png"),
])
def test_check_declared_type_normalizes(declared: str, expected: str) -> None:
    assert check_declared_type(declared, ("image/jpeg", "image/png"), profile="uploads") == expected


def test_check_declared_type_refuses_a_type_the_profile_does_not_allow() -> None:
    with pytest.raises(ValidationError) as caught:
        check_declared_type("image/gif", ["image/jpeg", "image/png"], profile="uploads")
    assert str(caught.value) == ("content type 'image/gif' is not allowed for profile uploads; "
                                 "allowed: image/jpeg, image/png")


@pytest.mark.parametrize("declared", [None, "", "   ", "; charset=utf-8"])
def test_check_declared_type_refuses_a_missing_type(declared: str | None) -> None:
    with pytest.raises(ValidationError, match="content type is missing for profile uploads; "
                                              "send one of: image/jpeg, image/png"):
        check_declared_type(declared, ("image/jpeg", "image/png"), profile="uploads")


def test_check_declared_type_message_escapes_header_injection() -> None:
    with pytest.raises(ValidationError) as caught:
        check_declared_type("image/x\r\nSet-Cookie: a=b", ("image/png",), profile="uploads")
    assert "\r" not in str(caught.value) and "\n" not in str(caught.value)
