"""Scratch folders for the files a job works on (downloads, rendered variants).

Made and removed inline rather than in a thread: a mkdir and the removal of a few
small files cost less than the trip to a thread would.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


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
