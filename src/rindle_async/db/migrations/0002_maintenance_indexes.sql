-- rindle_async schema, version 2: indexes for the day-2 verbs, which page through big
-- tables in keyset order (constant memory, index scans only; see docs/operations.md).
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").

-- abort-incomplete-uploads pages open sessions by (deadline, id); the id breaks ties, so a
-- page never sorts rows (sessions opened by one statement share a deadline).  It replaces
-- the deadline-only index, whose queries it serves too.
CREATE INDEX upload_sessions_open_deadline_id_idx ON __SCHEMA__.upload_sessions (expires_at, id)
    WHERE state IN ('initialized', 'signed', 'uploading', 'uploaded', 'verifying');
DROP INDEX __SCHEMA__.upload_sessions_open_deadline_idx;

-- cleanup-orphans: which listed multipart uploads an open session still owns
CREATE INDEX upload_sessions_open_multipart_idx ON __SCHEMA__.upload_sessions (multipart_upload_id)
    WHERE state IN ('initialized', 'signed', 'uploading', 'uploaded', 'verifying');

-- cleanup-orphans: whether a tombstone's purge job is still on its way
CREATE INDEX jobs_open_purge_asset_idx ON __SCHEMA__.jobs ((args->>'asset_id'))
    WHERE kind = 'purge_storage' AND status IN ('pending', 'enqueued');
