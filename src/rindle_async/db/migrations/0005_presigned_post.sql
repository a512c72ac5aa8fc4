-- rindle_async schema, version 5.
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").

-- Browser form uploads under a presigned POST policy (Uppy's AwsS3 plugin, Companion's
-- /s3/params): the store itself enforces the type, the key and content-length-range, so such a
-- session may open without a declared size (byte_size NULL, taken from the stored object).
-- The list names 'tus' (migration 6) too, so the constraint allows every strategy whichever
-- of the two ran last.
ALTER TABLE __SCHEMA__.upload_sessions DROP CONSTRAINT IF EXISTS upload_sessions_strategy_check;
ALTER TABLE __SCHEMA__.upload_sessions ADD CONSTRAINT upload_sessions_strategy_check
    CHECK (strategy IN ('presigned_put', 'multipart', 'presigned_post', 'tus'));

-- Who the upload is for, as the host named it (Uppy's Companion routes store what the host's
-- authorize callback answered): later calls on the session must come from the same owner.
ALTER TABLE __SCHEMA__.upload_sessions ADD COLUMN owner text;
