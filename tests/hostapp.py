"""A host application for the worker and CLI tests, configured from the environment.

Loaded both by the tests and by real ``arq rindle_async.WorkerSettings`` and
``rindle-async`` subprocesses (``RINDLE_APP=hostapp:rindle``).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

from rindle_async import LocalStorage, Profile, Rindle, S3Storage, Variant
from rindle_async.processing.pool import ProcessingPool


class SlowFirstVariantPut(LocalStorage):
    """Local storage whose first variant upload hangs (a worker killed mid-render), or takes
    ``T_SLOW_VARIANT_PUT`` seconds without blocking the worker (a slow store)."""

    async def put(self, key, data, **options):
        marker = pathlib.Path(os.environ["T_ROOT"]) / ".first-variant-put"
        if "/variants/" in key and os.environ.get("T_SLOW_FIRST_PUT") and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(60)  # blocks the whole worker, as a wedged render would
        if "/variants/" in key and os.environ.get("T_SLOW_VARIANT_PUT") and not marker.exists():
            marker.write_text(str(os.getpid()))
            await asyncio.sleep(float(os.environ["T_SLOW_VARIANT_PUT"]))
        return await super().put(key, data, **options)


#: With ``T_POISON`` set, images of these widths kill their render process (it exits at once)
#: or hang it past the render timeout, as a libvips crash or a pathological file would.
CRASH_WIDTH, HANG_WIDTH = 301, 302


def render_or_die(source, dest_dir, recipes, max_pixels, placeholder):
    """``images.render_job`` in a render process, unless the image is poison."""
    import pyvips

    from rindle_async.processing import images

    width = pyvips.Image.new_from_file(source).width
    if width in (CRASH_WIDTH, HANG_WIDTH):  # the test checks that this process is gone
        (pathlib.Path(os.environ["T_ROOT"]) / f".poisoned-{os.getpid()}").write_text(str(width))
    if width == CRASH_WIDTH:
        os._exit(1)
    if width == HANG_WIDTH:
        time.sleep(3600)
    return images.render_job(source, dest_dir, recipes, max_pixels, placeholder)


class PoisonedPool(ProcessingPool):
    """The worker's real process pool, rendering with :func:`render_or_die`."""

    async def run(self, fn, *args, **options):
        if fn.__name__ == "render_job":
            fn = render_or_die
        return await super().run(fn, *args, **options)


VARIANTS = {
    "thumb": Variant(width=64, height=64, fit="cover", format="webp", quality=75),
    "large": Variant(width=200, fit="inside", format="jpeg", quality=85),
    "square": Variant(width=100, height=100, fit="contain", format="png"),
    "tiny": Variant(width=40, height=30, fit="fill", format="avif", quality=50),
}


def build() -> Rindle:
    local = SlowFirstVariantPut(root=os.environ["T_ROOT"], base_url="http://127.0.0.1:9/rindle",
                                secret="host-app-secret-0123456789")
    storages: dict = {"local": local}
    profiles = [Profile(name="photos", storage="local", variants=VARIANTS),
                # a lazy variant, rendered when first asked for or by `rindle-async warm-variants`
                Profile(name="posters", storage="local",
                        variants={"thumb": VARIANTS["thumb"],
                                  "poster": Variant(width=120, fit="inside", format="webp", eager=False)})]
    if os.environ.get("T_S3"):
        # T_S3_TIMEOUT, T_S3_ATTEMPTS: a faulty endpoint's hangs and errors reach the jobs soon
        limits = {"read_timeout": float(os.environ["T_S3_TIMEOUT"])} if os.environ.get("T_S3_TIMEOUT") else {}
        if os.environ.get("T_S3_ATTEMPTS"):
            limits["max_attempts"] = int(os.environ["T_S3_ATTEMPTS"])
        storages["s3"] = S3Storage(bucket=os.environ["T_BUCKET"], endpoint_url=os.environ["T_S3"],
                                   path_style=True, **limits)
        profiles += [
            Profile(name="uploads", storage="s3", allow_mime=("image/jpeg", "image/png"),
                    variants=VARIANTS),
            Profile(name="jpegonly", storage="s3", allow_mime=("image/jpeg",),
                    variants={"thumb": VARIANTS["thumb"]}),
        ]
    quick = {"timeout": float(os.environ.get("T_TIMEOUT", "8")), "backoff": 0.2}
    if os.environ.get("T_TRIES"):
        quick["tries"] = int(os.environ["T_TRIES"])
    rindle = Rindle(database_url=os.environ["T_DATABASE_URL"], redis_url=os.environ["T_REDIS_URL"],
                    schema=os.environ["T_SCHEMA"], queue=f"q-{os.environ['T_SCHEMA']}",
                    storages=storages, profiles=profiles, processes=1, relay_interval=0.5,
                    job_settings={kind: quick for kind in ("promote_asset", "process_variant",
                                                            "purge_storage", "cleanup_orphans",
                                                            "abort_incomplete_uploads")})
    if os.environ.get("T_POISON"):
        # the pool this process's Rindle opens is the real one with a poisoned render
        import rindle_async.runtime

        rindle_async.runtime.ProcessingPool = PoisonedPool
    return rindle


def __getattr__(name: str) -> Rindle:
    # built on first use, so importing this module in the test process needs no environment
    if name == "rindle":
        globals()["rindle"] = built = build()
        return built
    raise AttributeError(name)
