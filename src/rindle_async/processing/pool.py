"""Processes for libvips work, with a hard per-call timeout that hurts no other call.

Each slot is a one-process ``ProcessPoolExecutor`` started with ``spawn``
(forking a process that already loaded libvips can hang).  Renders use ``size``
slots; header analysis has a slot of its own, so a promotion never waits behind
renders.  libvips can only be interrupted between tiles, so a call that overruns
its timeout has its process killed; only that slot is replaced, and the call
fails with :class:`RenderTimeout` (a failed try, retried by the job).  Calls
running in the other slots go on undisturbed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeVar

from ..errors import ConfigurationError

log = logging.getLogger("rindle_async.processing")
T = TypeVar("T")
#: Processes kept for header analysis, apart from the render processes.
ANALYSIS_SLOTS = 1


class RenderTimeout(TimeoutError):
    """A libvips call ran past its timeout; its process was killed."""


class RenderCrashed(RuntimeError):
    """The process running a libvips call died (a crash, the OOM killer); it was replaced."""


def usable_cores() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as limits:
            quota, period = limits.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_size() -> int:
    """Every usable core: a worker is meant to have its machine (or its share) to itself.

    A worker that shares its machine with the web app leaves a core free with
    ``RINDLE_PROCESSES`` (see docs/workers.md).
    """
    return usable_cores()


class _Lane:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.idle: list[ProcessPoolExecutor] = []
        self.gate: asyncio.Semaphore | None = None


class ProcessingPool:
    """Runs functions from ``processing.images`` in spawned processes, one call per process.

    size: render processes (default: every usable core); header analysis has one more.
    """

    def __init__(self, size: int | None = None) -> None:
        size = default_size() if size is None else size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigurationError(f"processing pool size={size!r} must be a positive int")
        self.size = size
        self._lanes = {"render": _Lane(size), "analysis": _Lane(ANALYSIS_SLOTS)}
        self._busy: set[ProcessPoolExecutor] = set()

    def _new_slot(self) -> ProcessPoolExecutor:
        from . import images  # loads libvips: only where work is really done

        # each process gets its share of the cores as libvips threads (one, with a process per core)
        threads = max(1, usable_cores() // self.size)
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=images.configure, initargs=(threads,))

    def start(self) -> None:
        """Start every process now (blocking, about a second), so the first calls do not wait."""
        pending: list[tuple[_Lane, ProcessPoolExecutor, Future[int]]] = []
        for lane in self._lanes.values():
            for _ in range(lane.slots - len(lane.idle)):
                executor = self._new_slot()
                pending.append((lane, executor, executor.submit(os.getpid)))
        for lane, executor, started in pending:
            started.result(timeout=120)
            lane.idle.append(executor)

    async def _acquire(self, slots: _Lane) -> ProcessPoolExecutor:
        """A process of the lane, once the lane has a free slot: an idle one, or a new one
        started (about a second: waiting, not the call's work)."""
        if slots.gate is None:
            slots.gate = asyncio.Semaphore(slots.slots)
        await slots.gate.acquire()
        if slots.idle:
            return slots.idle.pop()
        executor = self._new_slot()
        try:
            await asyncio.get_running_loop().run_in_executor(executor, os.getpid)
        except BaseException:
            _kill(executor)
            slots.gate.release()
            raise
        return executor

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float, lane: str = "render",
                  waiting: Callable[[], AbstractAsyncContextManager[Any]] | None = None) -> T:
        """Call ``fn(*args)`` in a pool process; kill that process if it overruns ``timeout``.

        fn: a module-level function of ``processing.images``.
        args: picklable arguments.
        timeout: seconds before the process is killed (counted once the call has a process).
        Raises :class:`RenderTimeout` past the timeout, :class:`RenderCrashed` if the process dies.
        lane: "render" or "analysis" (header reads, never queued behind renders).
        waiting: a context manager entered while the call waits for a free process
            (a job pauses its own timeout there).
        """
        slots = self._lanes[lane]
        async with (waiting or nullcontext)():
            executor = await self._acquire(slots)
        assert slots.gate is not None  # made by _acquire
        try:
            self._busy.add(executor)
            processes = _processes(executor)  # a broken executor forgets them
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            try:
                async with asyncio.timeout(timeout):
                    return await future  # an error raised by fn leaves the process healthy
            except TimeoutError:
                raise RenderTimeout(f"{fn.__name__} ran longer than {timeout:g}s; its process "
                                    "was killed") from None
            except BrokenProcessPool:
                how = await asyncio.to_thread(_how_it_ended, processes)
                log.warning("a processing pool process died running %s (%s); replacing it",
                            fn.__name__, how)
                raise RenderCrashed(f"the {lane} process died ({how}) while running {fn.__name__}; "
                                    "it was replaced (the input may be what kills it)") from None
            finally:
                self._busy.discard(executor)
                if _finished_cleanly(future):
                    slots.idle.append(executor)
                else:  # timed out, crashed or cancelled: the process may still be busy
                    _kill(executor)
        finally:
            slots.gate.release()

    def close(self) -> None:
        """Stop every process."""
        executors = [*self._busy]
        for slots in self._lanes.values():
            executors += slots.idle
            slots.idle = []
        self._busy.clear()
        for executor in executors:
            _kill(executor)


def _finished_cleanly(future: asyncio.Future[Any]) -> bool:
    """Whether the call returned or raised in a process that is still usable."""
    if not future.done() or future.cancelled():
        return False
    return not isinstance(future.exception(), BrokenProcessPool)


def _processes(executor: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    return list((executor._processes or {}).values())  # no public way to reach them


def _how_it_ended(processes: list[multiprocessing.process.BaseProcess]) -> str:
    """``exit code N`` or ``killed by SIGNAME``, for the process of a broken one-process slot."""
    deadline = time.monotonic() + 2
    for process in processes:
        process.join(timeout=2)
        # the executor's own thread may have reaped the process a moment before this join
        # (which then sees no child): its exit code appears on the process object shortly
        while process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.exitcode is not None and process.exitcode < 0:
            return f"killed by {signal.Signals(-process.exitcode).name}"
        if process.exitcode is not None:
            return f"exit code {process.exitcode}"
    return "it ended"


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill the executor's process, then wait for its management thread to wind down.

    Left running (``shutdown(wait=False)``), that thread races the interpreter's exit hook
    for the wakeup pipe it is closing: "OSError: Bad file descriptor" tracebacks at shutdown.
    With the process dead it finishes at once (a few milliseconds).
    """
    for process in _processes(executor):
        process.kill()
    executor.shutdown(wait=True, cancel_futures=True)
