"""Web-framework routes that serve :class:`~rindle_async.LocalStorage` URLs (PUT uploads, GET/HEAD delivery).

Import the adapter for your framework:

- ``rindle_async.contrib.starlette``: ``local_storage_routes(rindle)``, a Router to mount at the
  storage's ``base_url``;
- ``rindle_async.contrib.aiohttp``: ``add_local_storage_routes(app, rindle, prefix=...)``.

Both are thin over ``rindle_async.contrib.local_http``, the framework-neutral HTTP core that
decides every status, header and error body, so the two frameworks answer identically.
"""
