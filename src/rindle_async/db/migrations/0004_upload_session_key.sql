-- rindle_async schema, version 4.
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").

-- The local storage routes find the upload session that owns a PUT's key, and write only
-- while it is open: a ticket replayed after verification (or after the rows are purged)
-- must not overwrite or re-create the object.
CREATE INDEX upload_sessions_storage_key_idx ON __SCHEMA__.upload_sessions (storage_key);
