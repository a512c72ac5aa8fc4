"""SigV4 query-string presigning: S3 presigned URLs without botocore's per-request machinery.

A :class:`Presigner` makes, byte for byte, the URL botocore's ``S3SigV4QueryAuth``
makes for the same credentials, address, key, parameters and clock (``tests/test_sigv4.py``
compares them over thousands of random cases), tens of times faster (``bench/delivery.py``):
the signing key is derived once per (secret, day) instead of per URL, and no request
object, event hooks or endpoint rules run per URL.  Where an object lives (the address) is
botocore's decision, taken once per opened client by ``S3Storage``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from ..errors import ValidationError
from .signing import HmacSha256, quote_component, quote_path

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


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key: HMAC-SHA256 chained over date, region, service and "aws4_request".

    secret: the secret access key
    date: the credential scope's date, YYYYMMDD
    region: the signing region
    service: the signing service name
    """
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


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
        # One-entry caches, each a single tuple so that a reader never sees half an update.
        self._stamp = (-1, "", "")
        self._mac = ("", "", HmacSha256(b""))

    def _timestamp(self, now: float) -> tuple[str, str]:
        """(X-Amz-Date, date) for ``now``, truncated to the second like botocore's strftime."""
        second = int(now // 1)
        cached, amz_date, date = self._stamp
        if second != cached:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            date = amz_date[:8]
            self._stamp = (second, amz_date, date)
        return amz_date, date

    def mac(self, secret: str, date: str) -> HmacSha256:
        """HMAC-SHA256 keyed with the signing key for ``secret`` on ``date``; derived once and cached.

        secret: the secret access key
        date: the credential scope's date, YYYYMMDD
        """
        cached_secret, cached_date, mac = self._mac
        if cached_secret != secret or cached_date != date:
            # A new day or a refreshed secret derives a new key.
            mac = HmacSha256(signing_key(secret, date, self.region, self.service))
            self._mac = (secret, date, mac)
        return mac

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
        if headers:
            signed = {name.lower(): str(value) for name, value in headers.items()}
            if signed.get("content-type") == FORM_CONTENT_TYPE:
                del signed["content-type"]
            signed.setdefault("host", self._host)
            names = sorted(signed)
            signed_headers = ";".join(names)
            canonical_headers = "".join([f"{name}:{' '.join(signed[name].split())}\n" for name in names])
        else:
            signed_headers, canonical_headers = "host", f"host:{self._host}\n"
        pairs = [(quote_component(name), quote_component(str(value))) for name, value in query.items()
                 ] if query else []
        pairs += [("X-Amz-Algorithm", ALGORITHM),
                  ("X-Amz-Credential", quote_component(f"{credentials.access_key}/{scope}")),
                  ("X-Amz-Date", amz_date), ("X-Amz-Expires", quote_component(str(expires_in))),
                  ("X-Amz-SignedHeaders", quote_component(signed_headers))]
        if credentials.token is not None:
            pairs.append(("X-Amz-Security-Token", quote_component(credentials.token)))
        path = quote_path(key)
        # Canonical query: every parameter but the signature, sorted by encoded (name, value).
        canonical = "\n".join((method.upper(), f"{self._path}/{path}",
                                "&".join([f"{k}={v}" for k, v in sorted(pairs)]),
                                canonical_headers, signed_headers, UNSIGNED_PAYLOAD))
        string_to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope}\n"
                          f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = self.mac(credentials.secret_key, date).digest(string_to_sign.encode()).hex()
        query_string = "&".join([f"{k}={v}" for k, v in pairs])
        return f"{self.address}/{path}?{query_string}&X-Amz-Signature={signature}"
