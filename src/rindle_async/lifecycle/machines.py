"""The state machines, as data: each one's states, initial states, edges and named groups.

``docs/lifecycles.md`` prints these tables and ``tests/test_docs.py`` checks it against
them.  A *group* names what a set of states means to the rest of the code ("live": the
original may be served and variants rendered); code asks ``ASSET.group("live")`` or, in
SQL, passes ``ASSET.array("live")`` as a ``text[]`` parameter instead of spelling the
states out, so adding a state means editing this file only.

Two kinds of state are stops that no reader sees stored:

- ``promoting`` and ``available`` (asset): promotion walks an asset from ``analyzing``
  through both to ``processing`` or ``ready`` in one transaction (``transitions.walk``),
  so hooks get an event for each step but no query ever finds an asset in them.  They are
  kept because DESIGN names them and because hosts subscribe to those events.
- ``uploading`` and ``uploaded`` (upload session): DESIGN marks them optional.  Direct
  uploads move ``signed`` straight to ``verifying``; a resumable (tus) session is
  ``uploading`` from its first chunk until verification claims it; none enters ``uploaded``.

``JOB`` is the ledger's ``status`` column (pending, enqueued, discarded; a job that
succeeds is deleted with its handler's own state change).  It is data only: the ledger's
own statements (``ledger/relay.py``, ``ledger/runner.py``) write it, in bulk and without
events, and ``tests/test_ledger.py`` checks them against this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidTransition
from ..events import AssetStateChanged, BaseEvent, VariantStateChanged

#: What turns an updated row into its event: (row, from_state, to_state) -> event or None.
EventFactory = Callable[[Mapping[str, Any], str, str], BaseEvent | None]


def _edges(table: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    return {state: frozenset(targets) for state, targets in table.items()}


@dataclass(frozen=True)
class StateMachine:
    """A named state machine over one table: initial states, allowed edges, named groups.

    name: how errors and docs call it.
    table: the table whose ``column`` holds the state.
    initial: the states a new row may start in.
    edges: state -> the states it may move to (terminal states map to nothing).
    event: builds the event of a persisted step.
    groups: name -> the states that share a meaning (e.g. "live").
    join: a table joined on ``asset_id`` for the event's payload ("assets" for variants).
    column: the state column ("state"; the ledger's is "status").
    """

    name: str
    table: str
    initial: frozenset[str]
    edges: Mapping[str, frozenset[str]]
    event: EventFactory = field(repr=False)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    join: str = ""
    column: str = "state"

    def __post_init__(self) -> None:
        for name, members in self.groups.items():
            unknown = members - self.edges.keys()
            if unknown:
                raise ValueError(f"group {name!r} of {self.name} names unknown states {sorted(unknown)}")

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.edges)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(s for s, targets in self.edges.items() if not targets)

    def group(self, name: str) -> frozenset[str]:
        """The states of group ``name``; KeyError naming the groups there are."""
        try:
            return self.groups[name]
        except KeyError:
            raise KeyError(f"{self.name} has no state group {name!r}; "
                           f"its groups are {', '.join(sorted(self.groups))}") from None

    def array(self, name: str) -> list[str]:
        """Group ``name`` as a sorted list, for a ``state = ANY($n::text[])`` parameter."""
        return sorted(self.group(name))

    def literal(self, name: str) -> str:
        """Group ``name`` as an SQL list literal, ``('a', 'b')``: for a predicate the planner
        must match against a partial index's, which it does only with literals."""
        return "(" + ", ".join(f"'{state}'" for state in self.array(name)) + ")"

    def allows(self, from_state: str, to_state: str) -> bool:
        return to_state in self.edges.get(from_state, ())

    def check(self, row_id: object, from_state: str, to_state: str) -> None:
        """Raise :class:`InvalidTransition` unless ``from_state -> to_state`` is an edge."""
        for state in (from_state, to_state):
            if state not in self.edges:
                raise ValueError(f"{state!r} is not a {self.name} state; "
                                 f"states are {', '.join(sorted(self.edges))}")
        if not self.allows(from_state, to_state):
            raise InvalidTransition(self.name, row_id, from_state, to_state)


def _asset_event(row: Mapping[str, Any], from_state: str, to_state: str) -> BaseEvent:
    return AssetStateChanged(asset_id=str(row["id"]), profile=row["profile"], adapter=row["storage"],
                             from_state=from_state, to_state=to_state)


def _variant_event(row: Mapping[str, Any], from_state: str, to_state: str) -> BaseEvent:
    return VariantStateChanged(asset_id=str(row["asset_id"]), variant_id=str(row["id"]),
                               profile=row["asset_profile"], adapter=row["asset_storage"],
                               variant=row["name"], from_state=from_state, to_state=to_state)


def _no_event(row: Mapping[str, Any], from_state: str, to_state: str) -> None:
    return None  # upload sessions announce themselves with UploadStarted/UploadCompleted


ASSET = StateMachine(
    name="asset", table="assets", initial=frozenset({"staged", "validating"}),
    edges=_edges({
        "staged": ("validating", "quarantined", "deleted"),
        "validating": ("analyzing", "quarantined", "deleted"),
        "analyzing": ("promoting", "quarantined", "deleted"),
        "promoting": ("available", "quarantined", "deleted"),
        "available": ("processing", "ready", "quarantined", "deleted"),
        "processing": ("ready", "degraded", "quarantined", "deleted"),
        "ready": ("processing", "quarantined", "deleted"),
        "degraded": ("processing", "quarantined", "deleted"),
        "quarantined": ("deleted",),
        "deleted": (),
    }),
    event=_asset_event,
    groups={
        # promoted: the original may be served and variants rendered
        "live": frozenset({"available", "processing", "ready", "degraded"}),
        # verified bytes that are not refused or gone: a host may attach them
        "attachable": frozenset({"validating", "analyzing", "promoting", "available",
                                 "processing", "ready", "degraded"}),
        # waiting for (or in) promotion
        "promotable": frozenset({"validating", "analyzing"}),
        # promoted, with variants to keep rendered: regeneration and new variants apply
        "rendered": frozenset({"processing", "ready", "degraded"}),
        # every variant is settled
        "settled": frozenset({"ready", "degraded"}),
        # never delivered
        "forbidden": frozenset({"quarantined", "deleted"}),
        # should not last: `status` counts rows here too long as stuck
        "transient": frozenset({"validating", "analyzing", "promoting", "processing"}),
    })

VARIANT = StateMachine(
    name="variant", table="variants", initial=frozenset({"planned"}),
    edges=_edges({
        "planned": ("queued", "cancelled", "purged"),
        "queued": ("processing", "failed", "cancelled", "purged"),
        "processing": ("ready", "failed", "cancelled", "purged"),
        "ready": ("stale", "missing", "purged"),
        "stale": ("queued", "missing", "purged"),
        "missing": ("queued", "purged"),
        "failed": ("queued", "purged"),
        "cancelled": ("queued", "purged"),
        "purged": (),
    }),
    event=_variant_event,
    join="assets",
    groups={
        # not rendered yet: the asset is not settled while one is here
        "pending": frozenset({"planned", "queued", "processing"}),
        # what a render job takes: waiting for it, or claimed by an attempt
        "rendering": frozenset({"queued", "processing"}),
        # a settled asset with one of these is degraded
        "bad": frozenset({"failed", "cancelled", "missing"}),
        # may have an object to serve: ready, stale, or a re-render in progress (queued,
        # processing, failed again), which keeps serving the previous object
        "servable": frozenset({"ready", "stale", "queued", "processing", "failed"}),
        # whose object should exist in storage (verify-storage checks them)
        "stored": frozenset({"ready", "stale"}),
        # what regenerate-variants may queue again
        "regenerable": frozenset({"stale", "missing", "failed", "cancelled"}),
    })

UPLOAD_SESSION = StateMachine(
    name="upload_session", table="upload_sessions", initial=frozenset({"initialized"}),
    edges=_edges({
        "initialized": ("signed", "failed", "aborted", "expired"),
        "signed": ("uploading", "uploaded", "verifying", "failed", "aborted", "expired"),
        "uploading": ("uploaded", "verifying", "failed", "aborted", "expired"),
        "uploaded": ("verifying", "failed", "aborted", "expired"),
        "verifying": ("completed", "failed", "aborted", "expired"),
        "completed": (),
        "failed": (),
        "aborted": (),
        "expired": (),
    }),
    event=_no_event,
    groups={
        "open": frozenset({"initialized", "signed", "uploading", "uploaded", "verifying"}),
        # open, and its upload URL may still write: once verification claims the session,
        # the stored object is the one being checked
        "writable": frozenset({"initialized", "signed", "uploading", "uploaded"}),
        # ended without a verified file
        "closed_badly": frozenset({"failed", "aborted", "expired"}),
    })

JOB = StateMachine(
    name="job", table="jobs", initial=frozenset({"pending"}), column="status",
    edges=_edges({
        "pending": ("enqueued",),
        "enqueued": ("discarded",),
        "discarded": (),
    }),
    event=_no_event,
    groups={
        # staged and not given up: a job of these is on its way or running
        "active": frozenset({"pending", "enqueued"}),
    })

#: The machines whose rows move only through ``transitions`` (and are documented).
MACHINES = (ASSET, VARIANT, UPLOAD_SESSION)
