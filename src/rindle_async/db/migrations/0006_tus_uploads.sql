-- rindle_async schema, version 6 (5 is the presigned POST uploads of the Companion routes).
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").

-- tus resumable uploads are upload sessions with strategy 'tus'.  The list keeps
-- 'presigned_post' (migration 5: the Companion-style S3 POST-policy uploads), so the
-- constraint allows every strategy whether or not 5 ran before.
ALTER TABLE __SCHEMA__.upload_sessions DROP CONSTRAINT IF EXISTS upload_sessions_strategy_check;
ALTER TABLE __SCHEMA__.upload_sessions ADD CONSTRAINT upload_sessions_strategy_check
    CHECK (strategy IN ('presigned_put', 'multipart', 'presigned_post', 'tus'));

-- What a tus session carries beyond an upload session: the owner the host's authorization
-- callback named (only that owner may read, append to or terminate it) and the client's
-- Upload-Metadata, echoed by HEAD.  Dropped with its session.
CREATE TABLE __SCHEMA__.tus_uploads (
    session_id  uuid PRIMARY KEY REFERENCES __SCHEMA__.upload_sessions (id) ON DELETE CASCADE,
    owner       text,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb
);
