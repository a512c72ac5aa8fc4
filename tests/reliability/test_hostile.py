"""A hostile-input corpus run through the real paths, each case with the outcome it must end in.

Proxied uploads go through ``rindle.upload``; direct uploads through ``initiate_upload``, a PUT
to the local storage routes (Starlette, over httpx's ASGI transport) and ``verify_upload``;
both then through a real arq worker's promotion and rendering.  Signed URLs are tampered with,
expired, replayed, used across keys and methods, and given traversal keys.  Every case ends in
a precise error, a 4xx with its reason, a quarantine with its reason, or (filenames) the
sanitized display name the asset is stored and served under.  Nothing may be written, or read,
outside the storage root.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import pyvips
from starlette.applications import Starlette
from starlette.routing import Mount

from rindle_async import (Asset, LocalStorage, Profile, RindleError, TooLarge, ValidationError, Variant,
                          VerificationFailed)
from rindle_async.contrib.starlette import local_storage_routes
from rindle_async.delivery import content_disposition

from ..conftest import drain
from ..media import gif, gif_bomb, jpeg, png
from ..servers import peak_rss_mb
from ..test_worker import bomb_png

BASE = "http://rindle.test"
MAX_BYTES = 100_000
OUTSIDE = b"a secret next to the storage root"
PROFILE = Profile(name="hostile", storage="local", max_bytes=MAX_BYTES,
                  allow_mime=("image/jpeg", "image/png", "image/webp", "image/gif"),
                  variants={"thumb": Variant(width=16, height=16, fit="cover", format="webp", quality=50)})


# -- hostile files ---------------------------------------------------------------------------

HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)" width="8" height="8"/>'
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def webp_canvas_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """An animated WebP whose VP8X canvas declares width x height around one 16x16 frame."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)

    small = pyvips.Image.black(16, 16).webpsave_buffer()
    at = small.index(b"VP8 ")
    vp8 = small[at:at + 8 + struct.unpack("<I", small[at + 4:at + 8])[0]]
    canvas = chunk(b"VP8X", b"\x02\0\0\0" + (width - 1).to_bytes(3, "little")
                   + (height - 1).to_bytes(3, "little"))
    frame = chunk(b"ANMF", b"\0" * 6 + (15).to_bytes(3, "little") * 2 + (100).to_bytes(3, "little")
                  + b"\0" + vp8)
    body = b"WEBP" + canvas + chunk(b"ANIM", b"\0" * 6) + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_sof_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A small JPEG whose SOF frame header declares width x height."""
    data, at = bytearray(jpeg()), 2
    while not (0xC0 <= data[at + 1] <= 0xCF and data[at + 1] not in (0xC4, 0xC8, 0xCC)):
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp() -> bytes:
    return pyvips.Image.black(16, 16).webpsave_buffer()


def cut(data: bytes, keep: int | float) -> bytes:
    return data[:keep] if isinstance(keep, int) else data[:int(len(data) * keep)]


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


# -- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    """The call raises ``error`` and its message holds ``fragment``."""

    error: type[RindleError]
    fragment: str

    def problem(self, seen: Any) -> str | None:
        if isinstance(seen, self.error) and self.fragment in str(seen):
            return None
        return f"wanted {self.error.__name__} with {self.fragment!r}"


@dataclass(frozen=True)
class Status:
    """The HTTP answer has ``code`` and a JSON reason holding ``fragment``."""

    code: int
    fragment: str

    def problem(self, seen: Any) -> str | None:
        if (isinstance(seen, httpx.Response) and seen.status_code == self.code
                and seen.headers.get("content-type") == "application/json"
                and self.fragment in seen.json()["error"]):
            return None
        return f"wanted HTTP {self.code} with {self.fragment!r}"


@dataclass(frozen=True)
class Quarantined:
    """The asset is quarantined (no variants) with a reason holding ``fragment``."""

    fragment: str

    def problem(self, seen: Any) -> str | None:
        if (isinstance(seen, Asset) and seen.state == "quarantined" and not seen.variants
                and self.fragment in (seen.reason or "")):
            return None
        return f"wanted quarantined with {self.fragment!r}"


@dataclass(frozen=True)
class Degraded:
    """The header read, the pixels did not: every variant failed with ``fragment``."""

    fragment: str

    def problem(self, seen: Any) -> str | None:
        if (isinstance(seen, Asset) and seen.state == "degraded" and seen.variants
                and all(v.state == "failed" and self.fragment in (v.reason or "")
                        for v in seen.variants.values())):
            return None
        return f"wanted degraded, every variant failed with {self.fragment!r}"


@dataclass(frozen=True)
class Renamed:
    """Accepted and rendered, stored and served (Content-Disposition) as ``filename``."""

    filename: str

    def problem(self, seen: Any) -> str | None:
        if isinstance(seen, Asset) and seen.state == "ready" and seen.filename == self.filename:
            return None
        return f"wanted ready as {self.filename!r}"


Outcome = Raises | Status | Quarantined | Degraded | Renamed


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxied:
    name: str
    data: Callable[[], Any]
    expect: Outcome
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Direct:
    name: str
    body: bytes
    expect: Outcome
    filename: str = "upload"
    content_type: str = "image/png"
    byte_size: int | None = None  # declared; the body's size when None
    checksum: str | None = None
    put_type: str | None = None  # the Content-Type the PUT really sends
    chunked: bool = False  # no Content-Length: the size is counted while streaming
    replay: bytes | None = None  # PUT again with the ticket once verify_upload accepted it
    multipart: bool = False


OVER = png() + bytes(MAX_BYTES)
PROXIED = [
    # type spoofing: wrong extension, wrong declared type, other types disguised, polyglots
    Proxied("png named .jpg", png,
            Raises(ValidationError, "'photo.jpg' says image/jpeg but the bytes are image/png"),
            filename="photo.jpg"),
    Proxied("png named .jpg in fullwidth", png,
            Raises(ValidationError, "says image/jpeg but the bytes are image/png"),
            filename="photo\uff0ejpg"),
    Proxied("png declared jpeg", png,
            Raises(ValidationError, "declared image/jpeg but the bytes are image/png"),
            content_type="image/jpeg"),
    Proxied("declared type not allowed", png, Raises(ValidationError, "'image/svg+xml' is not allowed"),
            content_type="image/svg+xml"),
    Proxied("html as png", lambda: HTML,
            Raises(ValidationError, "bytes are text/html, which profile 'hostile'"),
            filename="x.png", content_type="image/png"),
    Proxied("svg as png", lambda: SVG, Raises(ValidationError, "bytes are image/svg+xml, which profile"),
            filename="x.png"),
    Proxied("pdf as jpeg", lambda: PDF, Raises(ValidationError, "bytes are application/pdf, which profile"),
            filename="x.jpg"),
    Proxied("zip as png", lambda: b"PK\x03\x04" + bytes(60),
            Raises(ValidationError, "bytes are application/zip"), filename="x.png"),
    Proxied("jpeg magic + html", lambda: b"\xff\xd8\xff\xe0" + HTML,
            Quarantined("libvips cannot read the file: VipsJpeg: premature end of JPEG image"),
            filename="x.jpg"),
    Proxied("gif magic + script", lambda: b"GIF89a/*\0\0*/=alert(1)//",
            Quarantined("libvips cannot read the file: gifload"), filename="x.gif"),
    Proxied("png magic + html", lambda: b"\x89PNG\r\n\x1a\n" + HTML,
            Quarantined("libvips cannot read the file"), filename="x.png"),
    # decompression bombs, declared in each format's header
    Proxied("png 30000x30000", lambda: bomb_png(30000, 30000),
            Quarantined("declares 30000x30000 = 900000000 pixels, over the profile's max_pixels of "
                        "50000000")),
    Proxied("png strip 1x100000000", lambda: bomb_png(1, 100_000_000),
            Quarantined("declares 1x100000000 = 100000000 pixels, over the profile's max_pixels")),
    Proxied("gif logical screen 65535x65535", gif_bomb,
            Quarantined("declares 65535x65535 = 4294836225 pixels (its GIF logical screen)")),
    Proxied("webp canvas 16383x16383", webp_canvas_bomb,
            Quarantined("declares 16383x16383 = 268402689 pixels, over the profile's max_pixels")),
    Proxied("jpeg SOF 60000x60000", jpeg_sof_bomb,
            Quarantined("declares 60000x60000 = 3600000000 pixels, over the profile's max_pixels")),
    # truncated and corrupt files of each format
    Proxied("png cut in its header", lambda: cut(png(), 20), Quarantined("libvips cannot read the file")),
    Proxied("png cut in its pixels", lambda: cut(png(), -30), Degraded("libvips could not decode the image")),
    Proxied("jpeg cut in its header", lambda: cut(jpeg(), 150),
            Quarantined("libvips cannot read the file: VipsJpeg: premature end of JPEG image")),
    Proxied("jpeg cut in its pixels", lambda: cut(jpeg(200, 150), 2 / 3),
            Degraded("libvips could not decode")),
    Proxied("gif cut", lambda: cut(gif(), 30), Quarantined("libvips cannot read the file: gifload")),
    Proxied("webp cut", lambda: cut(webp(), 20), Quarantined("libvips cannot read the file: webp")),
    Proxied("png with garbage after its signature", lambda: png()[:16] + bytes(range(256)) * 2,
            Quarantined("libvips cannot read the file")),
    Proxied("jpeg with random scan data", lambda: jpeg()[:4] + os.urandom(400),
            Quarantined("libvips cannot read the file")),
    # empty, one byte, over the limit from every kind of source
    Proxied("zero bytes", lambda: b"", Raises(ValidationError, "the upload is empty (0 bytes)")),
    Proxied("one byte", lambda: b"\x89", Raises(ValidationError, "of an unknown type")),
    Proxied("over max_bytes (bytes)", lambda: OVER,
            Raises(TooLarge, "over the 100000-byte limit of profile")),
    Proxied("over max_bytes (streamed)", lambda: chunks(OVER),
            Raises(TooLarge, "over the 100000-byte limit")),
    # filenames: stored and served as display names only
    Proxied("traversal filename", png, Renamed("passwd.png"), filename="../../etc/passwd.png"),
    Proxied("windows traversal filename", png, Renamed("x.png"), filename="..\\..\\Windows\\x.png"),
    Proxied("NUL in filename", png, Renamed("ab.png"), filename="a\x00b.png"),
    Proxied("CR/LF in filename", png, Renamed("aSet-Cookie: x=y.png"), filename="a\r\nSet-Cookie: x=y.png"),
    Proxied("RTL override in filename", png, Renamed("gpj.png"), filename="\u202egpj.png"),
    Proxied("fullwidth dots and solidus", png, Renamed("x.png"), filename="\uff0e\uff0e\uff0fx.png"),
    Proxied("division and fraction slashes", png, Renamed("x.png"), filename="..\u2215..\u2044x.png"),
    Proxied("1000-character filename", png, Renamed("a" * 251 + ".png"), filename="a" * 996 + ".png"),
    Proxied("reserved device name", png, Renamed("_CON.png"), filename="CON.png"),
    Proxied("fullwidth reserved device name", png, Renamed("_CON.png"), filename="\uff23\uff2f\uff2e.png"),
]

DIRECT = [
    Direct("extension contradicts the declared type", jpeg(),
           Raises(ValidationError, "'photo.png' says image/png but the declared type is image/jpeg"),
           filename="photo.png", content_type="image/jpeg"),
    Direct("declared type not allowed", png(), Raises(ValidationError, "'text/html' is not allowed"),
           content_type="text/html"),
    Direct("jpeg declared png", jpeg(), Quarantined("declared image/png but the bytes are image/jpeg")),
    Direct("html declared png", HTML,
           Quarantined("the bytes are text/html, which profile 'hostile' does not allow")),
    Direct("svg declared png", SVG, Quarantined("the bytes are image/svg+xml, which profile")),
    Direct("pdf declared jpeg", PDF, Quarantined("the bytes are application/pdf"), content_type="image/jpeg"),
    Direct("one byte", b"\x89", Quarantined("the bytes are not of a recognised type")),
    Direct("zero bytes", b"", Raises(ValidationError, "byte_size=0 must be a positive int")),
    Direct("gif logical screen bomb", gif_bomb(), Quarantined("(its GIF logical screen)"),
           content_type="image/gif"),
    Direct("png bomb", bomb_png(30000, 30000), Quarantined("declares 30000x30000 = 900000000 pixels")),
    Direct("jpeg cut in its header", cut(jpeg(), 150), Quarantined("libvips cannot read the file"),
           content_type="image/jpeg"),
    # size lies, both ways
    Direct("declared larger than sent", png(), Raises(VerificationFailed, "bytes but 5000 were declared"),
           byte_size=5000),
    Direct("declared smaller than sent", png(), Status(413, "over the 100 bytes this URL allows"),
           byte_size=100),
    Direct("declared smaller than streamed", png(), Status(413, "larger than the allowed 100 bytes"),
           byte_size=100, chunked=True),
    Direct("declared over max_bytes", png(), Raises(TooLarge, "is over the 100000-byte limit"),
           byte_size=MAX_BYTES + 1),
    Direct("checksum of other bytes", png(),
           Raises(VerificationFailed, "checksum mismatch: declared sha256:"),
           checksum="sha256:" + hashlib.sha256(b"other").hexdigest()),
    # the PUT itself
    Direct("PUT with another type", png(), Status(400, "but the URL was signed for 'image/png'"),
           put_type="image/jpeg"),
    Direct("PUT replayed after verification", png(), Status(410, "is completed; its URL no longer accepts"),
           replay=bytes(len(png()))),
    Direct("multipart on local storage", png(), Raises(ValidationError, "cannot do multipart uploads"),
           multipart=True),
    Direct("traversal filename", png(), Renamed("passwd.png"), filename="../../etc/passwd.png"),
    Direct("fullwidth traversal filename", png(), Renamed("x.png"), filename="\uff0e\uff0e\uff0fx.png"),
]


# -- running them ----------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """The folder holding the storage root and a secret beside it; nothing else may appear."""
    (tmp_path / "outside.txt").write_bytes(OUTSIDE)
    return tmp_path


@pytest.fixture
async def rindle(make_rindle, sandbox):
    storage = LocalStorage(root=sandbox / "media", base_url=f"{BASE}/rindle", secret="hostile-corpus-secret")
    return await make_rindle(relay=False, storages={"local": storage}, profiles=[PROFILE], processes=1)


@pytest.fixture
async def client(rindle) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[Mount("/rindle", app=local_storage_routes(rindle))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield client


def confined(sandbox: Path) -> list[str]:
    """What is wrong with the sandbox: anything outside the storage root, or a changed secret."""
    stray = [str(p.relative_to(sandbox)) for p in sandbox.rglob("*")
             if p.is_file() and p.name != "outside.txt" and "media" not in p.relative_to(sandbox).parts[:1]]
    changed = [] if (sandbox / "outside.txt").read_bytes() == OUTSIDE else ["outside.txt was changed"]
    return stray + changed


#: no process may grow past this while refusing the corpus (issue 9)
PEAK_RSS_MB = 256


def pool_peaks_mb(rindle) -> dict[int, float]:
    """Peak RSS (VmHWM) of each live process of the Rindle's libvips pool, by pid."""
    from rindle_async.processing.pool import _processes  # no public way to reach them

    peaks = {}
    for lane in rindle.runtime.processing._lanes.values():
        for executor in lane.idle:
            for process in _processes(executor):
                peaks[process.pid] = peak_rss_mb(process.pid)
    return peaks


async def settle(rindle, redis_url, client, cases, seen: dict[str, Any]) -> list[str]:
    """Run the worker over what was accepted, then compare every case with its outcome."""
    await drain(rindle, redis_url)
    peaks = pool_peaks_mb(rindle)
    problems = [f"pool process {pid} peaked at {mb:.0f} MB, over {PEAK_RSS_MB} MB"
                for pid, mb in peaks.items() if mb > PEAK_RSS_MB]
    if not peaks:
        problems.append("no libvips pool process was found to measure")
    for case in cases:
        observed = seen[case.name]
        if isinstance(observed, str):  # an asset id: what the worker made of it
            observed = await rindle.get_asset(observed)
            if isinstance(case.expect, Renamed) and observed.state == "ready":
                problems += await served_name(rindle, client, observed, case.expect.filename, case.name)
        if (problem := case.expect.problem(observed)) is not None:
            problems.append(f"{case.name}: {problem}; got {describe(observed)}")
    return problems


async def served_name(rindle, client, asset: Asset, filename: str, name: str) -> list[str]:
    response = await client.get(await rindle.url(asset.id, disposition="attachment"))
    header = response.headers.get("content-disposition", "")
    served = unquote(header.split("filename*=UTF-8''", 1)[1]) if "filename*=" in header else filename
    if (response.status_code, header) != (200, content_disposition("attachment", filename)) or any(
            part in unicodedata.normalize("NFKC", served) for part in ("/", "\\", "..")):
        return [f"{name}: served as {response.status_code} {header!r}"]
    return []


def describe(observed: Any) -> str:
    if isinstance(observed, httpx.Response):
        return f"HTTP {observed.status_code} {observed.text[:200]}"
    if isinstance(observed, Asset):
        variants = {n: (v.state, v.reason) for n, v in observed.variants.items()}
        return f"{observed.state} ({observed.reason}) {variants}"
    return f"{type(observed).__name__}: {observed}"


def test_the_corpus_is_large_and_its_names_unique():
    tables = (PROXIED, DIRECT, URLS)
    assert sum(map(len, tables)) >= 30
    for cases in tables:
        assert len({case.name for case in cases}) == len(cases)


async def test_proxied_uploads(rindle, client, redis_url, sandbox):
    seen: dict[str, Any] = {}
    for case in PROXIED:
        try:
            seen[case.name] = (await rindle.upload("hostile", case.data(), filename=case.filename,
                                                   content_type=case.content_type)).id
        except RindleError as exc:
            seen[case.name] = exc
    assert await settle(rindle, redis_url, client, PROXIED, seen) == []
    # a refused upload leaves no row and no object
    kept = [case for case in PROXIED if not isinstance(case.expect, Raises)]
    assert await rindle.runtime.pool.fetchval(f"SELECT count(*) FROM {rindle.schema}.assets") == len(kept)
    prefixes = {(await rindle.runtime.pool.fetchval(f"SELECT storage_key FROM {rindle.schema}.assets"
                                            " WHERE id = $1::uuid", seen[case.name])).rsplit("/", 1)[0]
                for case in kept}
    assert {info.key.rsplit("/", 1)[0].removesuffix("/variants")
            async for info in rindle.storages["local"].list("")} <= prefixes
    assert confined(sandbox) == []


async def test_direct_uploads_through_the_local_routes(rindle, client, redis_url, sandbox):
    seen: dict[str, Any] = {}
    for case in DIRECT:
        seen[case.name] = await direct(rindle, client, case)
    assert await settle(rindle, redis_url, client, DIRECT, seen) == []
    assert confined(sandbox) == []


async def direct(rindle, client: httpx.AsyncClient, case: Direct) -> Any:
    """Initiate, PUT through the routes and verify, as a client would; the first refusal."""
    try:
        declared = len(case.body) if case.byte_size is None else case.byte_size
        ticket = await rindle.initiate_upload("hostile", filename=case.filename,
                                              content_type=case.content_type, byte_size=declared,
                                              checksum=case.checksum, multipart=case.multipart)
    except RindleError as exc:
        return exc
    headers = {"Content-Type": case.put_type or ticket.headers["Content-Type"]}
    response = await client.put(ticket.url, headers=headers,
                                content=chunks(case.body, 64) if case.chunked else case.body)
    if response.status_code != 200:
        return response
    try:
        await rindle.verify_upload(ticket.session_id)
    except RindleError as exc:
        return exc
    if case.replay is not None:
        return await client.put(ticket.url, headers=ticket.headers, content=case.replay)
    return ticket.asset_id


# -- signed URLs -----------------------------------------------------------------------------


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(dict(parse_qsl(parts.query)) | changes)))


def other_key(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/other.png"))


@dataclass(frozen=True)
class Url:
    name: str
    method: str
    target: Callable[[dict[str, Any]], str]  # from the fixtures below: a ticket, a stored key's URLs
    expect: Status
    content_type: str = "image/png"


TRAVERSALS = {"encoded ../": "..%2F..%2Foutside.txt", "encoded %2e%2e/": "a%2F%2e%2e%2F%2e%2e%2Foutside.txt",
              "backslash": "..%5Coutside.txt", "NUL": "a%00%2F..%2Foutside.txt",
              "absolute": "%2Fetc%2Fpasswd"}
URLS = [
    Url("tampered signature", "PUT", lambda f: with_query(f["put"], sig="A" * 43),
        Status(403, "signature does not match")),
    Url("tampered max_bytes", "PUT", lambda f: with_query(f["put"], max_bytes="99999999"),
        Status(403, "signature does not match")),
    Url("tampered content_type", "PUT", lambda f: with_query(f["put"], content_type="text/html"),
        Status(403, "signature does not match")),
    Url("tampered expiry", "PUT", lambda f: with_query(f["put"], expires=str(int(time.time()) + 10**6)),
        Status(403, "signature does not match")),
    Url("expired", "PUT", lambda f: f["expired_put"], Status(403, "URL expired at")),
    Url("cross-key PUT", "PUT", lambda f: other_key(f["put"]), Status(403, "signature does not match")),
    Url("cross-key GET", "GET", lambda f: other_key(f["get"]), Status(403, "signature does not match")),
    Url("GET URL used to PUT", "PUT", lambda f: f["get"], Status(403, "URL was signed for GET, not PUT")),
    Url("PUT URL used to GET", "GET", lambda f: f["put"], Status(403, "URL was signed for PUT, not GET")),
    Url("repeated parameter", "GET", lambda f: f["get"] + "&max_bytes=1&max_bytes=2",
        Status(403, "more than once")),
    Url("missing signature", "GET", lambda f: f["get"].split("&sig=")[0],
        Status(403, "missing parameter sig")),
    Url("PUT after abort", "PUT", lambda f: f["aborted_put"],
        Status(410, "is aborted (aborted by the host)")),
    Url("double-encoded traversal", "GET", lambda f: f"/rindle/%252e%252e%252Foutside.txt?method=GET&sig=x",
        Status(403, "signature does not match")),
    *(Url(f"{name} key ({method})", method, lambda f, p=path, m=method: f"/rindle/{p}?method={m}&sig=x",
          Status(400, "storage key")) for name, path in TRAVERSALS.items() for method in ("GET", "PUT")),
]


async def test_signed_urls_refuse_tampering_replays_and_traversal(rindle, client, sandbox):
    storage = rindle.storages["local"]
    live = await rindle.initiate_upload("hostile", filename="a.png", content_type="image/png",
                                        byte_size=len(png()))
    aborted = await rindle.initiate_upload("hostile", filename="b.png", content_type="image/png",
                                           byte_size=len(png()))
    await rindle.abort_upload(aborted.session_id)
    stored = "hostile/00/kept/original.png"
    await storage.put(stored, png())
    key = unquote(urlsplit(live.url).path.removeprefix("/rindle/"))
    fixtures = {"put": live.url, "aborted_put": aborted.url, "get": await storage.url(stored, expires_in=60),
                "expired_put": storage.sign("PUT", key, expires_at=int(time.time()) - 1,
                                            max_bytes=len(png()), content_type="image/png")}
    problems = []
    for case in URLS:
        body = png() if case.method == "PUT" else None
        response = await client.request(case.method, case.target(fixtures), content=body,
                                        headers={"Content-Type": case.content_type})
        if (problem := case.expect.problem(response)) is not None:
            problems.append(f"{case.name}: {problem}; got {describe(response)}")
        if OUTSIDE in response.content:
            problems.append(f"{case.name}: served the secret outside the root")
    assert problems == []
    assert await storage.head(key) is None  # no refused PUT wrote the live session's object
    assert (await client.put(live.url, headers=live.headers, content=png())).status_code == 200
    assert confined(sandbox) == []
