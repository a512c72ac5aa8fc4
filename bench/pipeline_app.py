"""The host application of ``bench/pipeline.py``, configured from the environment.

Loaded by the benchmark (the web side: uploads) and by the real worker it starts,
``RINDLE_APP=pipeline_app:rindle arq rindle_async.WorkerSettings``.
"""

from __future__ import annotations

import os

from rindle_async import LocalStorage, Profile, Rindle, Variant

#: The profile of issue 8's measurements: two variants per upload.
PHOTOS = Profile(
    name="photos", storage="local", allow_mime=("image/jpeg",), max_bytes=64 * 1024 * 1024,
    max_pixels=120_000_000,
    variants={
        "thumb": Variant(width=128, height=128, fit="cover", format="webp", quality=80),
        "large": Variant(width=800, height=800, fit="inside", format="jpeg", quality=85),
    })


def build() -> Rindle:
    storage = LocalStorage(root=os.environ["B_ROOT"], base_url="http://127.0.0.1:9/rindle",
                           secret="pipeline-bench-secret-0123456789")
    return Rindle(database_url=os.environ["B_DATABASE_URL"], redis_url=os.environ["B_REDIS_URL"],
                  schema=os.environ["B_SCHEMA"], queue=f"q-{os.environ['B_SCHEMA']}",
                  storages={"local": storage}, profiles=[PHOTOS],
                  relay_interval=float(os.environ.get("B_RELAY_INTERVAL", "5")))


def __getattr__(name: str) -> Rindle:
    if name == "rindle":  # built on first use, from the environment the benchmark set
        globals()["rindle"] = built = build()
        return built
    raise AttributeError(name)
