"""What both adapters sign URLs with: HMAC-SHA256 keyed once, and percent-encoding cached.

Signing a page of URLs repeats the same key and mostly the same values, so each costs a
fraction of the general-purpose calls: ``HmacSha256(key).digest(message)`` equals
``hmac.digest(key, message, "sha256")`` without re-hashing the key's pads per message
(which OpenSSL 3's HMAC does at every call: about 4 µs against 1.5 µs here), and
:func:`quote_component` / :func:`quote_path` equal ``urllib.parse.quote`` with a cache or
a fast path for text that needs no escaping.
"""

from __future__ import annotations

import functools
import hashlib
import re
from urllib.parse import quote

BLOCK_SIZE = 64  # SHA-256's block size in bytes
INNER_PAD = bytes(x ^ 0x36 for x in range(256))
OUTER_PAD = bytes(x ^ 0x5C for x in range(256))
#: Text that ``quote(text, safe="/")`` returns unchanged.
PATH_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")


class HmacSha256:
    """One HMAC-SHA256 key (RFC 2104), ready to sign many messages.

    key: the secret (any length; longer than one block is hashed first, as RFC 2104 says)
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > BLOCK_SIZE:
            key = hashlib.sha256(key).digest()
        key = key.ljust(BLOCK_SIZE, b"\0")
        self._inner = hashlib.sha256(key.translate(INNER_PAD))
        self._outer = hashlib.sha256(key.translate(OUTER_PAD))

    def digest(self, message: bytes) -> bytes:
        """The 32-byte MAC of ``message``.

        message: the bytes to authenticate
        """
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@functools.lru_cache(maxsize=4096)
def quote_component(text: str) -> str:
    """``text`` UTF-8 percent-encoded except ``A-Za-z0-9-_.~`` (a query key or value, SigV4's rule).

    text: the text to encode; cached, as pages repeat content types, expiries and credentials
    """
    return quote(text, safe="")


def quote_path(key: str) -> str:
    """``key`` UTF-8 percent-encoded except ``A-Za-z0-9-_.~`` and "/" (an object key in a URL path).

    key: the object key
    """
    return key if PATH_SAFE.fullmatch(key) else quote(key, safe="/")
