"""Reading a table in keyset pages, and a stream in lists: what bounds the memory of abort
and cleanup, and how long they hold row locks, whatever the size of the tables."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..errors import ValidationError

T = TypeVar("T")

#: Rows per page read and per transaction of abort and cleanup.
BATCH = 200
FIRST_ID = uuid.UUID(int=0)  # below every uuid4, where keyset pages start
FIRST_DEADLINE = datetime.min.replace(tzinfo=timezone.utc)


async def keyset_pages(read: Callable[[Any], Awaitable[list[Any]]], key: Callable[[Any], Any],
                        start: Any, size: int) -> AsyncIterator[list[Any]]:
    """Pages ``read(after)`` of up to ``size`` rows, each after the ``key`` of the last row
    before it, until a short page."""
    if not isinstance(size, int) or size < 1:
        raise ValidationError(f"batch={size!r} must be a positive int (rows per page)")
    after = start
    while True:
        page = await read(after)
        if page:
            yield page
        if len(page) < size:
            return
        after = key(page[-1])


async def in_pages(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """A stream in lists of ``size`` (the last may be shorter): one query per list."""
    page: list[T] = []
    async for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


# -- abort ------------------------------------------------------------------------------
