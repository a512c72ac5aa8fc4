"""Load the host's ``Rindle`` named as ``module:attribute`` (``--app`` or ``RINDLE_APP``)."""

from __future__ import annotations

import importlib
import os
import sys

from .app import Rindle
from .errors import RindleError


def load_app(spec: str) -> Rindle:
    """Import ``module:attribute`` and return the Rindle it names.

    spec: e.g. ``"myapp.media:rindle"``.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RindleError(f"--app {spec!r} must look like module:attribute, e.g. myapp.media:rindle")
    # a console script's sys.path starts at its bin directory, not at the directory it runs in
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RindleError(f"--app {spec!r}: cannot import {module_name!r} ({exc})") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, Rindle):
        raise RindleError(f"--app {spec!r}: {module_name}.{attribute} is "
                          f"{type(app).__name__}, not a rindle_async.Rindle")
    return app


def worker_settings_from_environment() -> type:
    """``WorkerSettings`` for ``arq``: the Rindle named by RINDLE_APP, the queue in RINDLE_QUEUE,
    the render processes in RINDLE_PROCESSES."""
    spec = os.environ.get("RINDLE_APP")
    if not spec:
        raise RuntimeError("set RINDLE_APP=module:attribute to the host's Rindle object, e.g. "
                           "RINDLE_APP=myapp.media:rindle arq rindle_async.WorkerSettings")
    processes = os.environ.get("RINDLE_PROCESSES")
    return load_app(spec).worker_settings(queue=os.environ.get("RINDLE_QUEUE") or None,
                                          processes=int(processes) if processes else None)
