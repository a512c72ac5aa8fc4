"""The examples end to end, each as its own stack of subprocesses (migrate, worker, web app):
the Starlette app driven through its page in headless Chromium, the aiohttp app through its
HTTP API. The page's element contract is in examples/README.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pyvips
from playwright.sync_api import Browser, Error as PlaywrightError, Page, expect, sync_playwright

from .media import stored_files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
#: The Chromium that scripts/browser.sh provides (Debian's package; Playwright downloads none).
CHROMIUM = Path(os.environ.get("RINDLE_TEST_CHROMIUM", "/usr/bin/chromium"))
#: Seconds for an upload to be rendered, or for a purge to delete the files.
SETTLE = 30.0


def variant_sizes(width: int, height: int) -> dict[str, tuple[int, int]]:
    """What examples/*/media.py's avatar profile makes of a width x height original."""
    scale = min(1.0, 800 / width, 800 / height)  # large: inside 800x800, never enlarged
    return {"thumb": (128, 128), "large": (round(width * scale), round(height * scale))}


def gradient(path: Path, width: int, height: int) -> Path:
    """An image file whose format follows its suffix; a gradient, so a screenshot shows something."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    image = (x * (255 / width)).bandjoin([y * (255 / height), (x + y) * (255 / (width + height))])
    image.cast("uchar").write_to_file(str(path))
    return path


def wait_until(condition: Callable[[], object], what: str, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def files_of(media_root: Path, asset_id: str) -> list[Path]:
    """The stored files of an asset (its storage keys contain its id)."""
    return [path for path in stored_files(media_root) if asset_id in path.as_posix()]


def wait_purged(media_root: Path, asset_id: str) -> None:
    """Wait for the worker's purge to delete every file of a replaced or removed asset."""
    wait_until(lambda: not files_of(media_root, asset_id), f"the purge of asset {asset_id}'s files")


# -- the example stack -------------------------------------------------------------------

@dataclass
class ExampleStack:
    """An example web app and its worker, running as subprocesses; their output is in ``logs``."""

    base_url: str
    media_root: Path
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    bucket: str = ""  # the S3 bucket when the example stores on S3 (moto)
    s3_endpoint: str = ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"the {name} exited with code {proc.returncode}")

    def log_tails(self, lines: int = 25) -> str:
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            tails.append(f"----- {log} (last lines) -----\n{text}")
        return "\n".join(tails)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL for whatever is left of its process group (the worker's libvips pool)."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def web_command(framework: str, port: int) -> list[str]:
    if framework == "starlette":
        return [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port), "app:create_app"]


@pytest.fixture
def example_database_url(database_url: str) -> Iterator[str]:
    """A database of the example's own: media.py always uses schema and queue "rindle", as
    tests/test_docs.py does, so the example gets its own database (and a private Redis)."""
    name = f"rindle_browser_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    parts = urlsplit(database_url)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def start_example(example_database_url, private_redis, tmp_path) -> Iterator[Callable[[str], ExampleStack]]:
    """``start_example("starlette")``: migrate, then start the worker and the web app; stopped afterwards."""
    with contextlib.ExitStack() as cleanup:

        def start(framework: str, **extra_env: str) -> ExampleStack:
            folder = EXAMPLES / framework
            port = free_port()
            stack = ExampleStack(base_url=f"http://127.0.0.1:{port}", media_root=tmp_path / "media",
                                 logs=tmp_path / "logs")
            stack.logs.mkdir()
            env = {name: value for name, value in os.environ.items() if not name.startswith("RINDLE_")}
            env.update(RINDLE_DATABASE_URL=example_database_url, RINDLE_REDIS_URL=private_redis.url,
                       RINDLE_MEDIA_ROOT=str(stack.media_root), RINDLE_BASE_URL=stack.base_url,
                       RINDLE_SECRET=secrets.token_urlsafe(32), RINDLE_APP="media:rindle",
                       RINDLE_PROCESSES="1", PYTHONUNBUFFERED="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
                       **extra_env)
            migrate = subprocess.run([sys.executable, "-m", "rindle_async.cli", "--app", "media:rindle",
                                      "migrate"], cwd=folder, env=env, capture_output=True, text=True,
                                     timeout=60)
            assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}{migrate.stderr}"
            arq = [str(BIN / "arq")] if (BIN / "arq").exists() else [sys.executable, "-m", "arq"]
            for name, log_name, argv in (("worker", "worker.log", [*arq, "rindle_async.WorkerSettings"]),
                                         ("web app", "web.log", web_command(framework, port))):
                log = cleanup.enter_context(open(stack.logs / log_name, "wb"))
                proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        process_group=0)
                cleanup.callback(stop, proc)  # LIFO: the web app stops before the worker
                stack.procs[name] = proc

            def answers() -> bool:
                stack.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(stack.base_url + "/", timeout=2).status_code == 200
                return False

            try:
                wait_until(answers, f"the {framework} example answering {stack.base_url}/")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{stack.log_tails()}") from None
            return stack

        yield start


# -- Starlette: the page in headless Chromium --------------------------------------------

@pytest.fixture
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/browser.sh (or set RINDLE_TEST_CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox"] if os.geteuid() == 0 else [])  # Chromium's sandbox refuses root
        yield chromium
        chromium.close()


@contextlib.contextmanager
def explained(page: Page, stack: ExampleStack, screenshot: Path) -> Iterator[None]:
    """Turn a failure into one that shows a screenshot of the page and the children's logs."""
    try:
        yield
    except (AssertionError, PlaywrightError) as exc:
        try:
            page.screenshot(path=str(screenshot), full_page=True)
            shot = f"screenshot: {screenshot}; #error on the page: {page.locator('#error').text_content()!r}"
        except PlaywrightError as error:
            shot = f"no screenshot: {error}"
        raise AssertionError(f"{exc}\n{shot}\n{stack.log_tails()}") from exc


def expect_rendered(page: Page, sizes: dict[str, tuple[int, int]]) -> str:
    """Wait for the upload to be stored, the asset ready and every variant loaded; check their sizes."""
    state = page.locator("#state")
    expect(state).to_have_text("ready", timeout=SETTLE * 1000)
    expect(page.locator("#progress")).to_have_js_property("value", 100)
    for name, size in sizes.items():
        img = page.locator(f'#variants img[data-variant="{name}"][data-state="ready"][data-loaded="true"]')
        expect(img).to_have_count(1, timeout=SETTLE * 1000)
        assert img.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(size), name
    expect(page.locator("#error")).to_be_empty()
    return state.get_attribute("data-asset-id") or ""


def expect_picture(page: Page, width: int, height: int) -> None:
    """The responsive <picture>: a WebP source the browser picks, the JPEG <img> sized as the
    widest rendition, painted with the placeholder colour the API gives."""
    box = page.locator("#picture")
    expect(box).to_have_attribute("data-state", "picture", timeout=SETTLE * 1000)
    expect(box.locator('source[type="image/webp"]')).to_have_count(1)
    img = box.locator('img[data-loaded="true"]')
    expect(img).to_have_count(1, timeout=SETTLE * 1000)
    assert (img.get_attribute("width"), img.get_attribute("height")) == (str(width), str(height))
    assert "/variants/w" in img.evaluate("img => img.currentSrc") and ".webp" in img.evaluate("img => img.currentSrc")
    color = page.request.get(page.url.rstrip("/") + "/api/avatar").json()["asset"]["placeholder"]["color"]
    assert box.get_attribute("data-color") == color and re.fullmatch(r"#[0-9a-f]{6}", color)
    painted = box.evaluate("box => getComputedStyle(box).backgroundColor")
    assert painted == "rgb({}, {}, {})".format(*bytes.fromhex(color[1:]))


def test_starlette_page_in_chromium(start_example, browser, tmp_path):
    stack = start_example("starlette")
    first = gradient(tmp_path / "first.jpg", 1200, 900)
    second = gradient(tmp_path / "second.png", 600, 800)
    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    with explained(page, stack, tmp_path / "failure.png"):
        page.goto(stack.base_url + "/")
        state = page.locator("#state")
        expect(state).to_have_text("none")
        expect(page.locator("#remove")).to_be_disabled()

        page.set_input_files("#file", first)
        first_id = expect_rendered(page, variant_sizes(1200, 900))
        assert first_id and files_of(stack.media_root, first_id)
        expect_picture(page, 640, 480)

        page.set_input_files("#file", second)  # the replacement purges the first
        expect(state).not_to_have_attribute("data-asset-id", first_id, timeout=SETTLE * 1000)
        second_id = expect_rendered(page, variant_sizes(600, 800))
        wait_purged(stack.media_root, first_id)

        page.click("#remove")
        expect(state).to_have_text("none")
        expect(state).to_have_attribute("data-asset-id", "")
        expect(page.locator("#variants img")).to_have_count(0)
        expect(page.locator("#remove")).to_be_disabled()
        assert page.request.get(stack.base_url + "/api/avatar").json()["asset"] is None
        wait_purged(stack.media_root, second_id)
        assert page_errors == []


# -- aiohttp: the same flow through the HTTP API -----------------------------------------

def upload(client: httpx.Client, path: Path, content_type: str) -> dict:
    """What the page does: initiate, PUT the bytes to the ticket's URL with its headers, complete."""
    data = path.read_bytes()
    started = client.post("/api/avatar/uploads", json={"filename": path.name, "content_type": content_type,
                                                       "byte_size": len(data)})
    assert started.status_code == 201, started.text
    ticket = started.json()
    stored = httpx.request(ticket["method"], ticket["url"], content=data, headers=ticket["headers"])
    assert stored.is_success, stored.text
    completed = client.post(f"/api/avatar/uploads/{ticket['session_id']}/complete")
    assert completed.status_code == 200, completed.text
    assert completed.json()["asset"]["id"] == ticket["asset_id"]
    return completed.json()["asset"]


def rendered(client: httpx.Client, stack: ExampleStack, asset_id: str) -> dict:
    """Poll GET /api/avatar until the asset is ready, as the page does."""
    seen: dict = {}

    def ready() -> bool:
        stack.check_alive()
        seen.update(client.get("/api/avatar").json()["asset"])
        assert seen["id"] == asset_id and seen["state"] not in ("degraded", "quarantined", "deleted"), seen
        return seen["state"] == "ready"

    try:
        wait_until(ready, f"asset {asset_id} ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen}") from None
    return seen


def check_variants(asset: dict, sizes: dict[str, tuple[int, int]]) -> None:
    loaders = {"thumb": "webpload_buffer", "large": "jpegload_buffer"}
    assert [variant["name"] for variant in asset["variants"]] == list(sizes)
    for variant in asset["variants"]:
        fetched = httpx.get(variant["url"])
        assert fetched.status_code == 200, (variant, fetched.text)
        picture = pyvips.Image.new_from_buffer(fetched.content, "")
        seen = (picture.width, picture.height, picture.get("vips-loader"))
        assert seen == (*sizes[variant["name"]], loaders[variant["name"]]), variant
        assert (variant["state"], variant["width"], variant["height"]) == ("ready", *seen[:2])


def test_aiohttp_http_api(start_example, tmp_path):
    stack = start_example("aiohttp")
    first = gradient(tmp_path / "first.jpg", 1200, 900)
    second = gradient(tmp_path / "second.png", 600, 800)
    with httpx.Client(base_url=stack.base_url, headers={"X-Demo-User": "ann"}, timeout=15) as client:
        try:
            assert client.get("/api/avatar").json() == {"user": "ann", "asset": None}
            first_id = upload(client, first, "image/jpeg")["id"]
            check_variants(rendered(client, stack, first_id), variant_sizes(1200, 900))
            assert files_of(stack.media_root, first_id)

            second_id = upload(client, second, "image/png")["id"]
            assert second_id != first_id
            check_variants(rendered(client, stack, second_id), variant_sizes(600, 800))
            wait_purged(stack.media_root, first_id)

            assert client.delete("/api/avatar").json() == {"user": "ann", "asset": None}
            assert client.get("/api/avatar").json() == {"user": "ann", "asset": None}
            wait_purged(stack.media_root, second_id)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.log_tails()}") from exc


# -- tus: tus-js-client in Chromium against /files/, cut mid-way and resumed ---------------

#: tus-js-client, installed pinned from npm by scripts/npm-tus.sh; injected into the page by the test.
TUS_JS = Path(os.environ.get("RINDLE_TEST_NPM_TUS", ROOT / "var" / "npm-tus")) / "node_modules" / \
    "tus-js-client" / "dist" / "tus.min.js"

#: Starts a tus upload of the picked file in one PATCH, aborts it once `cut` bytes were sent (the
#: connection drops mid-body: the test throttles the page's upload bandwidth), asks the server for
#: its offset, then resumes with a new Upload from the upload URL, as a page reloaded after a
#: network failure would.
TUS_CUT_AND_RESUME = """async ([cut]) => {
  const file = document.querySelector('#tus-file').files[0];
  const options = {endpoint: location.origin + '/files/', retryDelays: [],
                   metadata: {filename: file.name, filetype: file.type}};
  const url = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {...options, onError: reject,
      onSuccess: () => reject(new Error('the upload finished before it was cut')),
      onProgress: (sent) => { if (sent >= cut) { upload.abort(); resolve(upload.url); } }});
    upload.start();
  });
  const head = await fetch(url, {method: 'HEAD', headers: {'Tus-Resumable': '1.0.0'}});
  const stored = Number(head.headers.get('Upload-Offset'));
  const asset = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {...options, uploadUrl: url, onError: reject,
      onSuccess: ({lastResponse}) => resolve(lastResponse.getHeader('Rindle-Asset-Id'))});
    upload.start();
  });
  return {url, stored, asset, size: file.size};
}"""


def noise_image(path: Path, side: int) -> Path:
    """A PNG that hardly compresses (about side * side * 3 bytes), so the upload takes several chunks."""
    noise = pyvips.Image.gaussnoise(side, side, sigma=80, mean=128).cast("uchar")
    noise.bandjoin([noise.rot180(), noise.flip("horizontal")]).write_to_file(str(path), compression=0)
    return path


@pytest.mark.parametrize("framework", ["starlette", "aiohttp"])
def test_tus_js_client_cut_and_resumed_in_chromium(framework, start_example, browser, tmp_path):
    if not TUS_JS.exists():
        pytest.fail(f"no tus-js-client at {TUS_JS}: run scripts/npm-tus.sh")
    stack = start_example(framework)
    image = noise_image(tmp_path / "big.png", 1000)  # about 3 MB: six 512 KiB PATCHes
    page = browser.new_page()
    with explained(page, stack, tmp_path / "failure.png"):
        page.goto(stack.base_url + "/")
        page.add_script_tag(path=str(TUS_JS))
        page.evaluate("""() => { const input = document.createElement('input');
                                 input.type = 'file'; input.id = 'tus-file'; document.body.append(input); }""")
        page.set_input_files("#tus-file", image)
        network = page.context.new_cdp_session(page)
        network.send("Network.enable")
        network.send("Network.emulateNetworkConditions", {  # about 2 MB/s up: the cut lands mid-PATCH
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 2_000_000})
        started = time.monotonic()
        result = page.evaluate(TUS_CUT_AND_RESUME, [1300 * 1024])
        assert 0 < result["stored"] < result["size"], result  # cut mid-way; resumed, not restarted
        with httpx.Client(base_url=stack.base_url, headers={"X-Demo-User": "demo"}, timeout=15) as client:
            asset = rendered(client, stack, result["asset"])
        check_variants(asset, variant_sizes(1000, 1000))
        print(f"\n{framework}: tus-js-client {result['size']} bytes, cut at {result['stored']}, "
              f"upload start -> ready in {time.monotonic() - started:.1f} s")


# -- Uppy (pinned npm @uppy/core + @uppy/aws-s3) against the Companion routes, on moto -----------

#: What the documented bucket CORS rule allows (docs/uploads.md, "Uppy"); moto honours it.
CORS_RULE = {"AllowedOrigins": ["http://127.0.0.1:*"], "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
             "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3000}
UPPY_BUNDLE = ROOT / ".cache" / "uppy" / "uppy.js"
MiB = 1024 * 1024


def run_async(coroutine) -> Any:
    """Run a coroutine to its end from a sync test (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def noise_png(path: Path, width: int, height: int) -> Path:
    """An uncompressed PNG of noise: about width x height x 3 bytes, so its size is chosen."""
    noise = pyvips.Image.gaussnoise(width, height, mean=128, sigma=40)
    noise.bandjoin([noise, noise]).cast("uchar").pngsave(str(path), compression=0)
    return path


@pytest.fixture
def uppy_example(start_example, s3_endpoint) -> Callable[[str], ExampleStack]:
    """``uppy_example("starlette")``: the example on a fresh moto bucket with the documented CORS rule."""
    if not UPPY_BUNDLE.exists():
        pytest.fail(f"{UPPY_BUNDLE} is missing: run scripts/uppy.sh (make services does)")
    from rindle_async.storage.s3 import botocore_session

    def start(framework: str) -> ExampleStack:
        bucket = f"rindle-uppy-{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            async with botocore_session().create_client("s3", region_name="us-east-1",
                                                        endpoint_url=s3_endpoint) as client:
                await client.create_bucket(Bucket=bucket)
                await client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [CORS_RULE]})

        run_async(create())
        stack = start_example(framework, RINDLE_S3_BUCKET=bucket, RINDLE_S3_ENDPOINT=s3_endpoint,
                              RINDLE_MAX_BYTES=str(32 * MiB))
        stack.bucket, stack.s3_endpoint = bucket, s3_endpoint
        return stack

    return start


def sessions_of(database_url: str) -> list[dict]:
    async def read() -> list[dict]:
        conn = await asyncpg.connect(database_url)
        try:
            return [dict(row) for row in await conn.fetch(
                "SELECT s.strategy, s.state, s.storage_key, s.multipart_upload_id, a.state AS asset_state"
                " FROM rindle.upload_sessions s JOIN rindle.assets a ON a.id = s.asset_id ORDER BY s.created_at")]
        finally:
            await conn.close()
    return run_async(read())


async def multipart_uploads(stack: ExampleStack) -> list[str]:
    """The unfinished multipart uploads in the example's bucket."""
    from rindle_async.storage.s3 import botocore_session

    async with botocore_session().create_client("s3", region_name="us-east-1",
                                                endpoint_url=stack.s3_endpoint) as client:
        listed = await client.list_multipart_uploads(Bucket=stack.bucket)
    return [upload["UploadId"] for upload in listed.get("Uploads", [])]


def open_uppy_page(browser: Browser, stack: ExampleStack, *, dashboard: bool = False) -> tuple[Page, list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stack.base_url + "/uppy" + ("?ui=dashboard" if dashboard else ""))
    page.wait_for_function("() => window.uppy !== undefined")
    expect(page.locator("#state")).to_have_text("none")
    # Count the parts Uppy finished, so the tests can act mid-upload.
    page.evaluate("() => { window.partsDone = 0; uppy.on('s3-multipart:part-uploaded', () => { window.partsDone++; }); }")
    return page, errors


def expect_ready(page: Page) -> float:
    """Wait for the avatar to be ready with both variants shown; return when that happened."""
    expect(page.locator("#state")).to_have_text("ready", timeout=SETTLE * 1000)
    expect(page.locator('#variants img[data-state="ready"]')).to_have_count(2)
    expect(page.locator("#error")).to_be_empty()
    return time.monotonic()


@pytest.mark.parametrize("framework", ["starlette", "aiohttp"])
def test_uppy_single_upload_through_a_post_policy(uppy_example, example_database_url, browser, tmp_path,
                                                  framework):
    stack = uppy_example(framework)
    page, errors = open_uppy_page(browser, stack)
    picture = gradient(tmp_path / "me.jpg", 1200, 900)
    with explained(page, stack, tmp_path / "failure.png"):
        started = time.monotonic()
        page.set_input_files("#file", picture)
        took = expect_ready(page) - started
        assert [(s["strategy"], s["state"]) for s in sessions_of(example_database_url)] == [
            ("presigned_post", "completed")]
        key = sessions_of(example_database_url)[0]["storage_key"]
        stolen = httpx.post(f"{stack.base_url}/api/avatar/uploads/attach", json={"key": key},
                            headers={"X-Demo-User": "mallory"})
        assert stolen.status_code == 403, stolen.text  # the page's user (demo) started it
        assert errors == []
    print(f"\nUppy POST-policy upload -> ready ({framework}, {picture.stat().st_size} bytes): {took:.2f} s")


@pytest.mark.parametrize("framework", ["starlette", "aiohttp"])
def test_uppy_multipart_upload_paused_resumed_and_retried(uppy_example, example_database_url, browser,
                                                          tmp_path, framework):
    stack = uppy_example(framework)
    page, errors = open_uppy_page(browser, stack)
    picture = noise_png(tmp_path / "big.png", 2900, 2900)  # about 25 MB: five 5 MiB parts
    page.evaluate("() => uppy.once('s3-multipart:part-uploaded', () => document.getElementById('pause').click())")
    failed: list[str] = []

    def fail_once(route) -> None:  # the store answers the first PUT of part 3 with a 503: Uppy retries it
        if failed:
            return route.continue_()
        failed.append(route.request.url)
        route.fulfill(status=503, body="<Error><Code>SlowDown</Code></Error>",
                      headers={"Access-Control-Allow-Origin": stack.base_url})
    page.route(re.compile(r".*[?&]partNumber=3(&|$)"), fail_once)
    with explained(page, stack, tmp_path / "failure.png"):
        started = time.monotonic()
        page.set_input_files("#file", picture)
        page.wait_for_function("window.partsDone >= 1", timeout=SETTLE * 1000)
        expect(page.locator("#phase")).to_have_attribute("data-phase", "paused")
        (session,) = sessions_of(example_database_url)
        assert (session["strategy"], session["state"]) == ("multipart", "signed")
        listed = httpx.get(f"{stack.base_url}/s3/multipart/{session['multipart_upload_id']}",
                           params={"key": session["storage_key"]})
        assert listed.status_code == 200 and len(listed.json()) >= 1, listed.text
        time.sleep(0.5)
        assert sessions_of(example_database_url)[0]["state"] == "signed"  # paused: not completed
        page.click("#resume")
        took = expect_ready(page) - started
        assert [(s["strategy"], s["state"]) for s in sessions_of(example_database_url)] == [
            ("multipart", "completed")]
        assert len(failed) == 1 and errors == []
    print(f"\nUppy multipart upload with a pause and a retried part -> ready ({framework}, "
          f"{picture.stat().st_size} bytes): {took:.2f} s")


def test_uppy_cancel_aborts_the_session(uppy_example, example_database_url, browser, tmp_path):
    stack = uppy_example("aiohttp")
    page, errors = open_uppy_page(browser, stack)
    picture = noise_png(tmp_path / "big.png", 2000, 2000)  # about 12 MB: multipart
    page.evaluate("() => uppy.once('s3-multipart:part-uploaded', () => document.getElementById('cancel').click())")
    with explained(page, stack, tmp_path / "failure.png"):
        page.set_input_files("#file", picture)
        page.wait_for_function("window.partsDone >= 1", timeout=SETTLE * 1000)
        seen: list[list[tuple[str, str]]] = []

        def aborted() -> bool:  # aborted and tombstoned, and soon purged (rows and all) by the worker
            seen.append([(s["state"], s["asset_state"]) for s in sessions_of(example_database_url)])
            return seen[-1] in ([("aborted", "deleted")], [])
        wait_until(aborted, f"the cancelled upload's session aborted (seen {seen[-1:]})")
        assert all(states in ([("signed", "staged")], [("aborted", "deleted")], [])
                   for states in seen), seen
        wait_until(lambda: not run_async(multipart_uploads(stack)), "the multipart upload aborted at S3")
        expect(page.locator("#state")).to_have_text("none")
        assert errors == []


def test_uppy_dashboard_uploads_several_files(uppy_example, example_database_url,
                                               browser, tmp_path):
    stack = uppy_example("aiohttp")
    page, errors = open_uppy_page(browser, stack, dashboard=True)
    pictures = [gradient(tmp_path / "one.jpg", 640, 480), gradient(tmp_path / "two.png", 300, 400)]
    with explained(page, stack, tmp_path / "failure.png"):
        expect(page.locator(".uppy-Dashboard")).to_be_visible()
        page.evaluate("() => { window.succeeded = 0; uppy.on('upload-success', () => { window.succeeded++; }); }")
        page.locator(".uppy-Dashboard-input").first.set_input_files(pictures)
        expect(page.locator(".uppy-Dashboard-Item")).to_have_count(2)
        page.locator(".uppy-StatusBar-actionBtn--upload").click()
        page.wait_for_function("window.succeeded === 2", timeout=SETTLE * 1000)
        expect_ready(page)
        # each was attached in turn: the one replaced is purged, rows and all
        wait_until(lambda: [(s["strategy"], s["state"]) for s in sessions_of(example_database_url)] == [
            ("presigned_post", "completed")], "one session left, completed")
        assert errors == []
