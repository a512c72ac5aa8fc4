"""SigV4 query-string presigning: S3 presigned URLs without botocore's per-request machinery.

A :class:`Presigner` makes, byte for byte, the URL botocore's ``S3SigV4QueryAuth``
makes for the same credentials, address, key, parameters and clock (``tests/test_sigv4.py``
compares them over thousands of random cases), about ten times faster: the signing
key is derived once per (secret, day) instead of per URL, and no request object,
event hooks or endpoint rules run per URL.  Where an object lives (the address) is
botocore's decision, taken once per opened client by ``S3Storage``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import quote, urlsplit

from ..errors import ValidationError

ALGORITHM = "AWS4-HMAC-SHA256"
#: A presigned URL cannot know its body, so it signs this in place of the payload hash.
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: botocore drops a Content-Type of exactly this value from presigned requests (it is the one it
#: sets itself on form bodies); doing the same keeps the URLs identical.
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
DEFAULT_PORTS = {"http": 80, "https": 443}


class Credentials(Protocol):
    """One frozen set of AWS credentials, such as botocore's ``ReadOnlyCredentials``."""

    @property
    def access_key(self) -> str: ...

    @property
    def secret_key(self) -> str: ...

    @property
    def token(self) -> str | None: ...


def encode(value: str) -> str:
    """Percent-encode a query key or value as SigV4 (and botocore) do: only ``A-Za-z0-9-_.~`` stay.

    value: the text to encode (UTF-8)
    """
    return quote(value, safe="-_.~")


def host_header(address: str) -> str:
    """The Host value botocore signs for ``address``: lowercase, no userinfo, default port dropped.

    address: a URL
    """
    parts = urlsplit(address)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class Presigner:
    """Presigned URLs for the objects under one address, signed for one region and service.

    address: the URL a key is appended to after a "/", e.g. "https://bucket.s3.amazonaws.com"
      (virtual-hosted) or "http://127.0.0.1:9000/bucket" (path-style)
    region: the signing region, e.g. "us-east-1"
    service: the signing service name
    """

    def __init__(self, *, address: str, region: str, service: str = "s3") -> None:
        parts = urlsplit(address)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
            raise ValidationError(f"presigner address {address!r} must be an http(s) URL with a host "
                                  f"and no query or fragment")
        if not region or not service:
            raise ValidationError(f"presigner region={region!r}, service={service!r}; name both")
        self.address = address[:-1] if address.endswith("/") else address
        self.region = region
        self.service = service
        self._host = host_header(address)
        self._path = parts.path[:-1] if parts.path.endswith("/") else parts.path
        self._second = -1
        self._stamp = ("", "")
        self._key_for: tuple[str, str] = ("", "")
        self._key = b""

    def _timestamp(self, now: float) -> tuple[str, str]:
        """(X-Amz-Date, date) for ``now``, truncated to the second like botocore's strftime."""
        second = int(now // 1)
        if second != self._second:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._second, self._stamp = second, (stamp, stamp[:8])
        return self._stamp

    def signing_key(self, secret: str, date: str) -> bytes:
        """The SigV4 signing key for ``secret`` on ``date`` (YYYYMMDD); derived once and cached.

        secret: the secret access key
        date: the credential scope's date
        """
        if self._key_for != (secret, date):
            key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            # A refreshed secret or a new day derives a new key; the cache holds one entry.
            self._key_for, self._key = (secret, date), key
        return self._key

    def url(self, method: str, key: str, *, credentials: Credentials, expires_in: int,
            query: Mapping[str, str | int] | None = None, headers: Mapping[str, str | int] | None = None,
            now: float | None = None) -> str:
        """A presigned URL for ``method`` on ``key``, valid ``expires_in`` seconds from ``now``.

        method: the HTTP method the URL allows
        key: the object key (any text; it is percent-encoded except "/" and "~")
        credentials: the access key, secret and (for temporary credentials) session token
        expires_in: seconds the URL stays valid
        query: operation parameters, in URL order (e.g. {"response-content-type": "image/png"})
        headers: headers the client must send with exactly these values (e.g. Content-Type)
        now: Unix time of signing (default: the clock)
        """
        amz_date, date = self._timestamp(time.time() if now is None else now)
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        signed = {name.lower(): str(value) for name, value in (headers or {}).items()}
        if signed.get("content-type") == FORM_CONTENT_TYPE:
            del signed["content-type"]
        signed.setdefault("host", self._host)
        names = sorted(signed)
        signed_headers = ";".join(names)
        pairs = [(encode(name), encode(str(value))) for name, value in (query or {}).items()]
        pairs += [("X-Amz-Algorithm", ALGORITHM),
                  ("X-Amz-Credential", encode(f"{credentials.access_key}/{scope}")),
                  ("X-Amz-Date", amz_date), ("X-Amz-Expires", encode(str(expires_in))),
                  ("X-Amz-SignedHeaders", encode(signed_headers))]
        if credentials.token is not None:
            pairs.append(("X-Amz-Security-Token", encode(credentials.token)))
        path = f"{self._path}/{quote(key, safe='/~')}"
        canonical = "\n".join((
            method.upper(), path, "&".join(f"{k}={v}" for k, v in sorted(pairs)),
            "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
            signed_headers, UNSIGNED_PAYLOAD))
        string_to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope}\n"
                          f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.digest(self.signing_key(credentials.secret_key, date), string_to_sign.encode(),
                                "sha256").hex()
        query_string = "&".join(f"{k}={v}" for k, v in pairs)
        return f"{self.address}/{quote(key, safe='/~')}?{query_string}&X-Amz-Signature={signature}"
