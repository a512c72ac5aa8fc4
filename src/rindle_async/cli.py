"""``rindle-async``: day-2 commands against a host's ``Rindle`` object.

    rindle-async --app myapp.media:rindle migrate

``--app`` (or the ``RINDLE_APP`` environment variable) names the host's Rindle
as ``module:attribute``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence

from .app import Rindle
from .errors import RindleError


def load_app(spec: str) -> Rindle:
    """Import ``module:attribute`` and return the Rindle it names.

    spec: e.g. ``"myapp.media:rindle"``.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RindleError(f"--app {spec!r} must look like module:attribute, e.g. myapp.media:rindle")
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


async def _migrate(rindle: Rindle, args: argparse.Namespace) -> int:
    async with rindle:
        applied = await rindle.migrate()
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))} to schema {rindle.schema}")
    else:
        print(f"schema {rindle.schema} is up to date")
    return 0


COMMANDS = {"migrate": (_migrate, "apply pending database migrations (safe to repeat)")}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rindle-async`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="rindle-async", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=os.environ.get("RINDLE_APP"),
                        help="the host's Rindle as module:attribute (default: $RINDLE_APP)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, description=text)
    args = parser.parse_args(argv)
    if not args.app:
        parser.error("--app module:attribute (or RINDLE_APP) is required")
    try:
        rindle = load_app(args.app)
        return asyncio.run(COMMANDS[args.command][0](rindle, args))
    except RindleError as exc:
        print(f"rindle-async: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"rindle-async: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
