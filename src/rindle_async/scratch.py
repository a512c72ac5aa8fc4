"""Scratch folders for the files a job works on (downloads, rendered variants), and the local
copy of an object a job reads.

Made and removed inline rather than in a thread: a mkdir and the removal of a few
small files cost less than the trip to a thread would.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage.base import Storage


@contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    """A new private folder under the system's temp dir, removed with what it holds.

    prefix: the folder name's start, naming its job (e.g. "rindle-render-").
    """
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def local_copy(storage: Storage, key: str, folder: str, *, in_place: bool = True,
                     etag: str | None = None) -> str:
    """A local file with the object's bytes: the stored file itself when the store is local and
    ``in_place`` allows it, else a copy downloaded into ``folder``.

    storage: the store holding ``key``.
    key: the object.
    folder: the job's scratch folder.
    in_place: whether the stored file may be read where it is (no client can write the key).
    etag: download only this version (ObjectChanged if the object was rewritten since).
    """
    local_path = getattr(storage, "local_path", None)
    if local_path is not None and in_place:
        return str(await local_path(key))
    path = os.path.join(folder, "original")
    await storage.download(key, path, if_match=etag)
    return path
