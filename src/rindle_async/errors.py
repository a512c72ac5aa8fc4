"""The exceptions rindle_async raises, all rooted at :class:`RindleError`.

Each message says what failed and what to do about it.  ``retryable`` tells the
job wrapper whether a failure inside a background job is worth another try.
"""

from __future__ import annotations

from collections.abc import Mapping


class RindleError(Exception):
    """Base class of every error rindle_async raises on purpose."""

    retryable = False


class ConfigurationError(RindleError, ValueError):
    """A profile, variant, storage or ``Rindle(...)`` option is invalid."""


class ValidationError(RindleError, ValueError):
    """Input was refused: a forbidden type, an oversize file, a bad argument."""


class NotFound(RindleError, LookupError):
    """The asset, session, attachment or job does not exist."""


class InvalidTransition(RindleError):
    """A state machine refused an edge, or the row had already moved on."""

    def __init__(self, machine: str, row_id: object, from_state: str, to_state: str,
                 actual: str | None = None) -> None:
        self.machine = machine
        self.row_id = row_id
        self.from_state = from_state
        self.to_state = to_state
        self.actual = actual
        if actual is None or actual == from_state:
            detail = f"{machine} {row_id}: {from_state} -> {to_state} is not an allowed transition"
        else:
            detail = (f"{machine} {row_id}: cannot go {from_state} -> {to_state}, "
                      f"the row is in state {actual!r} now (it moved on or was changed concurrently)")
        super().__init__(detail)


class VerificationFailed(RindleError):
    """An uploaded object did not match what its upload session declared."""


class UploadClosed(RindleError):
    """A write to a direct upload's URL was refused: no upload session open for writing owns
    its key any more (it is being verified, or completed, failed, aborted or expired)."""


class StorageError(RindleError):
    """The object store failed; usually worth a retry."""

    retryable = True


class ObjectChanged(RindleError):
    """A stored object is not the version asked for: it was rewritten since its ETag was read."""


class DeliveryForbidden(RindleError):
    """A URL was refused: the asset is quarantined or deleted, or a signature is bad."""


class NotReady(RindleError):
    """The asked-for variant is not rendered yet; retry later or pass ``fallback="original"``."""


class TransactionError(RindleError):
    """A connection was used in a way that could lose staged jobs or events."""


class TooLarge(ValidationError):
    """A file (declared, or counted while streaming) is larger than allowed."""


class OffsetMismatch(ValidationError):
    """A resumable upload's chunk does not start where the stored bytes end (tus: 409)."""

    def __init__(self, session_id: object, given: int, stored: int) -> None:
        self.given, self.stored = given, stored
        super().__init__(f"upload session {session_id}: the chunk starts at offset {given} but "
                         f"{stored} bytes are stored; ask for the offset (HEAD) and resume from there")


class UploadBusy(RindleError):
    """Another request (in another process) is storing a chunk of this resumable upload right
    now (tus: 423); retry once it finished."""


class Unsupported(RindleError):
    """The storage adapter cannot do what was asked (e.g. multipart on local storage)."""


class ContractViolation(RindleError):
    """A storage adapter broke rules of the storage contract (``rindle_async.storage.contract``).

    ``failures`` maps each broken rule's name to what the adapter did and what the rule wants.
    """

    def __init__(self, adapter: str, failures: Mapping[str, str]) -> None:
        self.adapter = adapter
        self.failures = dict(failures)
        listed = "\n".join(f"- {rule}: {message}" for rule, message in self.failures.items())
        super().__init__(f"storage adapter {adapter!r} broke {len(self.failures)} rule(s) of the "
                         f"storage contract:\n{listed}")
