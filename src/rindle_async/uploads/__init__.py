"""Uploads, one module per flow.

``sessions``: direct uploads.  ``initiate_upload`` refuses at once what the profile
forbids, commits a staged asset and its session, then presigns outside the
transaction; the client sends the bytes straight to the store.  ``sign_upload`` and
``presign_part`` mint fresh URLs within the session's deadline, ``abort_upload``
abandons a session, and ``check_writable`` tells the local storage routes whether a
PUT may still write: only while its session is open and not yet being verified.

``verification``: ``verify_upload`` is the only trust gate of a direct upload.  It
checks the stored object (size, deadline, checksum) outside any transaction, then
completes the session and hands the asset to promotion in one transaction, recording
what it saw (size, ETag, sha256 when it read the bytes) so that promotion can prove
it reads the same object.  The real type, pixel count and the rest are checked from
the bytes by the promotion job before anything is promoted.

``resumable``: uploads sent in chunks over many requests (the tus routes): each is an
upload session whose offset is derived from the stored bytes (``appending`` keeps them,
per kind of store); the chunk that completes the file goes through ``verify_upload``.

``lookup``: reading sessions back: ``get_upload`` by id, ``find_upload`` by storage key, and
``list_parts``, the parts the store holds for an open multipart session.

``proxied``: ``upload`` streams a file through the host: the type is sniffed from the
first bytes before anything is stored, and the size limit holds while streaming.
"""

from .lookup import find_upload, get_upload, list_parts
from .proxied import upload
from .resumable import append_resumable, create_resumable, resumable_upload, terminate_resumable
from .sessions import UNVERIFIED, abort_upload, check_writable, initiate_upload, presign_part, sign_upload
from .verification import verify_upload

__all__ = ["UNVERIFIED", "abort_upload", "append_resumable", "check_writable", "create_resumable",
           "find_upload", "get_upload", "initiate_upload", "list_parts", "presign_part", "resumable_upload",
           "sign_upload", "terminate_resumable", "upload", "verify_upload"]
