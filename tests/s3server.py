"""A real S3 HTTP endpoint for the tests: moto's threaded server, one per test process."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

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
