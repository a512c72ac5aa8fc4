"""Processes for libvips work, with a hard per-call timeout that hurts no other call.

Each slot is a one-process ``ProcessPoolExecutor`` started with ``spawn``
(forking a process that already loaded libvips can hang).  libvips can only be
interrupted between tiles, so a call that overruns its timeout has its process
killed; only that slot is replaced, and the call fails with
:class:`RenderTimeout` (a failed try, retried by the job).  Calls running in the
other slots go on undisturbed.
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
    """Runs functions from ``processing.images`` in spawned processes, one call per process.

    size: number of processes (default: cores - 1, at least 1).
    """

    def __init__(self, size: int | None = None) -> None:
        size = default_size() if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"processing pool size={size!r} must be a positive int")
        self.size = size
        self._idle: list[ProcessPoolExecutor] = []
        self._busy: set[ProcessPoolExecutor] = set()
        self._slots: asyncio.Semaphore | None = None

    def _new_slot(self) -> ProcessPoolExecutor:
        from . import images  # loads libvips: only where work is really done

        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=images.configure)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Call ``fn(*args)`` in a pool process; kill that process if it overruns ``timeout``.

        fn: a module-level function of ``processing.images``.
        args: picklable arguments.
        timeout: seconds before the process is killed.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            executor = self._idle.pop() if self._idle else self._new_slot()
            self._busy.add(executor)
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            try:
                async with asyncio.timeout(timeout):
                    return await future  # an error raised by fn leaves the process healthy
            except TimeoutError:
                raise RenderTimeout(f"{fn.__name__} ran longer than {timeout:g}s; its process "
                                    "was killed") from None
            except BrokenProcessPool:
                log.warning("a processing pool process died (e.g. a libvips crash); replacing it")
                raise
            finally:
                self._busy.discard(executor)
                if _finished_cleanly(future):
                    self._idle.append(executor)
                else:  # timed out, crashed or cancelled: the process may still be busy
                    _kill(executor)

    def close(self) -> None:
        """Stop every process."""
        executors, self._idle = [*self._idle, *self._busy], []
        self._busy.clear()
        for executor in executors:
            _kill(executor)


def _finished_cleanly(future: asyncio.Future[Any]) -> bool:
    """Whether the call returned or raised in a process that is still usable."""
    if not future.done() or future.cancelled():
        return False
    return not isinstance(future.exception(), BrokenProcessPool)


def _kill(executor: ProcessPoolExecutor) -> None:
    for process in list((executor._processes or {}).values()):  # no public way to kill one
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
