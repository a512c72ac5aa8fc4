"""A process pool for libvips work with a hard per-call timeout.

Processes are started with ``spawn``: forking a process that already loaded
libvips can hang.  libvips can only be interrupted between tiles, so a call
that overruns its timeout has its process killed; the pool is then replaced and
the call fails with :class:`RenderTimeout` (a failed try, retried by the job).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ..errors import ConfigurationError

log = logging.getLogger("rindle_async.processing")
T = TypeVar("T")


class RenderTimeout(TimeoutError):
    """A libvips call ran past its timeout; its process was killed."""


def default_size() -> int:
    """Cores minus one, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


class ProcessingPool:
    """Runs functions from ``processing.images`` in spawned processes.

    size: number of processes (default: cores - 1, at least 1).
    """

    def __init__(self, size: int | None = None) -> None:
        size = default_size() if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"processing pool size={size!r} must be a positive int")
        self.size = size
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            from . import images  # loads libvips: only where work is really done

            self._executor = ProcessPoolExecutor(
                max_workers=self.size, mp_context=multiprocessing.get_context("spawn"),
                initializer=images.configure)
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Call ``fn(*args)`` in a pool process; kill it if it overruns ``timeout`` seconds.

        fn: a module-level function of ``processing.images``.
        args: picklable arguments.
        timeout: seconds before the process is killed.
        """
        executor = self._pool()
        future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._kill(executor)
            raise RenderTimeout(f"{fn.__name__} ran longer than {timeout:g}s; its process was "
                                "killed") from None
        except BrokenProcessPool:
            self._kill(executor)  # a process died (e.g. a libvips crash); start afresh
            raise

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        for process in list((executor._processes or {}).values()):  # no public way to kill one
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        log.warning("processing pool replaced after a killed or crashed process")

    def close(self) -> None:
        """Stop the processes."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
