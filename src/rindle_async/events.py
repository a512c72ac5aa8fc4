"""Lifecycle events and the hook bus that delivers them after commit.

Events are msgspec structs; ``msgspec.json.encode(event)`` gives JSON with a
``"type"`` tag naming the event, and ``msgspec.json.decode(data, type=Event)``
turns it back.  They are queued by the unit of work that causes them and
delivered only when its transaction commits.  A hook may be sync or async; a
hook that raises is logged and never breaks the lifecycle.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone

import msgspec

log = logging.getLogger("rindle_async.events")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class BaseEvent(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    occurred_at: datetime = msgspec.field(default_factory=_now)


class UploadStarted(BaseEvent, frozen=True, kw_only=True):
    """An upload session was created (``initiate_upload`` committed)."""

    session_id: str
    asset_id: str
    profile: str
    adapter: str


class UploadCompleted(BaseEvent, frozen=True, kw_only=True):
    """An upload was verified and handed to promotion (``verify_upload`` committed).

    ``session_id`` is None for a proxied ``upload``.
    """

    session_id: str | None
    asset_id: str
    profile: str
    adapter: str
    byte_size: int


class AssetStateChanged(BaseEvent, frozen=True, kw_only=True):
    """An asset moved along its state machine."""

    asset_id: str
    profile: str
    adapter: str
    from_state: str
    to_state: str


class VariantStateChanged(BaseEvent, frozen=True, kw_only=True):
    """A variant moved along its state machine."""

    asset_id: str
    variant_id: str
    profile: str
    adapter: str
    variant: str
    from_state: str
    to_state: str


class DeliverySigned(BaseEvent, frozen=True, kw_only=True):
    """A delivery URL was issued; ``mode`` is ``"signed"`` or ``"public"``."""

    asset_id: str
    profile: str
    adapter: str
    variant: str | None
    mode: str


class OwnerErased(BaseEvent, frozen=True, kw_only=True):
    """A host record's media was erased (``erase_owner``): its slots detached, the assets only
    it held tombstoned (their purges staged), the ones other records hold retained."""

    owner_type: str
    owner_id: str
    slots: int
    assets_erased: int
    assets_retained: int


class CleanupRun(BaseEvent, frozen=True, kw_only=True):
    """A maintenance run finished; ``counts`` says what it did (or would do)."""

    worker: str
    dry_run: bool
    counts: dict[str, int]


Event = (UploadStarted | UploadCompleted | AssetStateChanged | VariantStateChanged
         | DeliverySigned | OwnerErased | CleanupRun)
EVENT_TYPES: tuple[type[BaseEvent], ...] = (UploadStarted, UploadCompleted, AssetStateChanged,
                                            VariantStateChanged, DeliverySigned, OwnerErased, CleanupRun)

Handler = Callable[[BaseEvent], Awaitable[None] | None]


class EventBus:
    """Subscribed hooks, each with the event types it wants (all when none given)."""

    def __init__(self) -> None:
        self._subscriptions: list[tuple[Handler, tuple[type[BaseEvent], ...]]] = []

    def subscribe(self, handler: Handler, *event_types: type[BaseEvent]) -> Callable[[], None]:
        """Deliver events to ``handler``; return a function that unsubscribes it.

        handler: a function or coroutine function taking one event.
        event_types: the event classes to deliver; none means every event.
        """
        if not callable(handler):
            raise TypeError(f"subscribe() needs a callable handler, got {handler!r}")
        for event_type in event_types:
            if event_type not in EVENT_TYPES:
                raise TypeError(f"{event_type!r} is not a rindle_async event type; "
                                f"choose from {', '.join(t.__name__ for t in EVENT_TYPES)}")
        entry = (handler, tuple(event_types))
        self._subscriptions.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)

        return unsubscribe

    async def deliver(self, events: Iterable[BaseEvent]) -> None:
        """Hand each event to every matching hook, in order; hook errors are logged."""
        for event in events:
            for handler, wanted in list(self._subscriptions):
                if wanted and not isinstance(event, wanted):
                    continue
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("rindle_async event hook %r failed on %s", handler,
                                  type(event).__name__)
