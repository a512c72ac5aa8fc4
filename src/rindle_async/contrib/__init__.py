"""Web-framework routes: LocalStorage URLs (PUT uploads, GET/HEAD delivery) and Uppy Companion's S3 routes.

Import the adapter for your framework:

- ``rindle_async.contrib.starlette``: ``local_storage_routes(rindle)``, a Router to mount at the
  storage's ``base_url``; ``companion_routes(rindle, profile=..., authorize=...)``, routes for
  Uppy's AwsS3 plugin (``companionEndpoint`` mode);
- ``rindle_async.contrib.aiohttp``: ``add_local_storage_routes(app, rindle, prefix=...)`` and
  ``add_companion_routes(app, rindle, profile=..., authorize=...)``.

Both are thin over framework-neutral cores that decide every status, header and error body, so
the two frameworks answer identically: ``rindle_async.contrib.local_http`` and
``rindle_async.contrib.companion``.
"""
