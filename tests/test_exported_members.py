"""The public surface, pinned: a name added to or dropped from it is a decision, made here."""

from __future__ import annotations

import ast
import pathlib

import rindle_async
from rindle_async import Rindle

PACKAGE = pathlib.Path(rindle_async.__file__).parent

EXPORTED = {
    "Asset", "AssetStateChanged", "AssetVariant", "Attachment", "CleanupRun", "ConfigurationError",
    "Delivered", "DeliveryForbidden", "DeliverySigned", "Event", "ImageMetadata", "InvalidTransition",
    "JobKind", "JobRun", "LocalStorage", "NotFound", "NotReady", "ObjectChanged", "OffsetMismatch", "OwnerErased",
    "Part", "Picture", "PictureSource", "Placeholder", "PresignedPost", "PresignedRequest", "Profile",
    "ResumableUpload", "Rindle", "RindleError", "S3Storage", "StorageError", "StoredPart", "TooLarge",
    "TransactionError", "Unsupported", "UploadClosed", "UploadCompleted", "UploadSession", "UploadStarted",
    "UploadTicket", "ValidationError", "Variant",
    "VariantStateChanged", "VerificationFailed", "recipe_digest",
}
FACADE = {
    # lifecycle and the opened parts
    "open", "close", "is_open", "runtime", "config", "schema", "storages", "profiles", "migrate",
    # transactions, events, the ledger and workers
    "transaction", "subscribe", "stage_job", "flush_jobs", "reconcile_jobs", "ledger_summary",
    "mark_stale_variants", "worker_settings", "arq_functions",
    # uploads, assets, attachments, delivery
    "initiate_upload", "sign_upload", "presign_part", "verify_upload", "abort_upload", "upload",
    "get_upload", "find_upload", "list_parts",
    "get_asset", "attach", "detach", "attachment", "attachments", "erase_owner", "url", "urls",
    "srcset", "srcsets", "picture_sources", "pictures",
    # resumable (tus) uploads
    "create_resumable_upload", "resumable_upload", "append_resumable_upload", "terminate_resumable_upload",
}


def test_the_package_exports_exactly_the_public_names():
    assert set(rindle_async.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(rindle_async, name) is not None


def test_the_facade_has_exactly_the_public_members():
    assert {name for name in dir(Rindle) if not name.startswith("_")} == FACADE


def test_worker_settings_are_built_once_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "worker_host.py").write_text(
        "from rindle_async import Rindle\n"
        "rindle = Rindle(database_url='postgresql://x', queue='host-queue')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RINDLE_APP", "worker_host:rindle")
    monkeypatch.delitem(vars(rindle_async), "WorkerSettings", raising=False)
    try:
        first = rindle_async.WorkerSettings
        assert rindle_async.WorkerSettings is first  # what `arq rindle_async.WorkerSettings` loads
        assert first.queue_name == "host-queue"
        assert "WorkerSettings" in dir(rindle_async)
    finally:
        vars(rindle_async).pop("WorkerSettings", None)  # the next test's environment builds its own


def test_no_module_below_the_facade_imports_it():
    # the facade, its entry points (CLI, app loader, worker settings) and the web adapters
    # sit above it; everything else receives a Runtime or a piece of it
    above = {"app.py", "cli.py", "app_loader.py", "worker.py", "__init__.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if str(relative) in above or relative.parts[0] == "contrib":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "app":
                offenders.append(str(relative))
    assert offenders == []


def test_the_maintenance_package_loads_its_verbs_on_first_use():
    from rindle_async import maintenance

    assert maintenance.__all__ == sorted(maintenance._EXPORTS)
    for name in maintenance.__all__:
        assert getattr(maintenance, name) is not None
