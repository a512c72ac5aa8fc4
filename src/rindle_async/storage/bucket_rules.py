"""What an S3 bucket's CORS and lifecycle rules must hold for browser uploads, and what is
missing from a given set (``doctor`` reads the bucket's and reports it).

A browser's direct upload is a cross-origin request to the bucket: a PUT with the signed
``Content-Type`` (a whole file, or each part of a multipart upload), or a POST of a form
(a POST policy).  Multipart clients (Uppy, the AWS SDK) read each part's ``ETag`` response
header, which a browser hides unless the rule exposes it.  Multipart uploads a browser
abandons keep their parts (and their cost) until an ``AbortIncompleteMultipartUpload``
lifecycle rule removes them; cleanup aborts the ones it finds too, but only under the
profiles' prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["cors_problems", "lifecycle_problems"]


def _allows_origin(rule: Mapping[str, Any], origin: str | None) -> bool:
    origins = rule.get("AllowedOrigins") or []
    return "*" in origins or origin is None or origin in origins


def _lower(values: Sequence[str] | None) -> set[str]:
    return {v.lower() for v in values or []}


def cors_problems(rules: Sequence[Mapping[str, Any]] | None, *, origin: str | None = None,
                  methods: Sequence[str] = ("PUT",)) -> list[str]:
    """What the bucket's CORS rules lack for browser uploads from ``origin``; empty when nothing.

    rules: the ``CORSRules`` of the bucket (None when it has no CORS configuration).
    origin: the app's origin, e.g. ``https://app.example.com``; None checks any rule.
    methods: the methods the uploads use: PUT (single and multipart), POST (POST policies).
    """
    if not rules:
        return ["the bucket has no CORS configuration: browsers cannot upload to it directly"]
    fitting = [rule for rule in rules if _allows_origin(rule, origin)]
    if not fitting:
        return [f"no CORS rule allows the origin {origin}"]
    problems = []
    for method in methods:
        if not any(method in (rule.get("AllowedMethods") or []) for rule in fitting):
            problems.append(f"no CORS rule{_for(origin)} allows {method}")
    if not any({"*", "content-type"} & _lower(rule.get("AllowedHeaders")) for rule in fitting):
        problems.append(f"no CORS rule{_for(origin)} allows the Content-Type header (AllowedHeaders)")
    if not any("etag" in _lower(rule.get("ExposeHeaders")) for rule in fitting):
        problems.append(f"no CORS rule{_for(origin)} exposes ETag (ExposeHeaders): browser multipart "
                        "uploads fail with 'Missing ETag'")
    return problems


def _for(origin: str | None) -> str:
    return f" for {origin}" if origin else ""


def lifecycle_problems(rules: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """What the bucket's lifecycle rules lack; empty when an enabled rule aborts incomplete
    multipart uploads for the whole bucket.

    rules: the ``Rules`` of the bucket's lifecycle configuration (None when it has none).
    """
    for rule in rules or []:
        whole = not (rule.get("Prefix") or (rule.get("Filter") or {}).get("Prefix"))
        if rule.get("Status") == "Enabled" and rule.get("AbortIncompleteMultipartUpload") and whole:
            return []
    return ["no enabled lifecycle rule aborts incomplete multipart uploads (AbortIncompleteMultipartUpload, "
            "e.g. after 1 day): abandoned parts stay billed"]
