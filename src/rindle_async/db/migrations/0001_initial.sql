-- rindle_async schema, version 1.
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").
-- State columns are written only through rindle_async.states; the CHECKs below
-- repeat the state sets so a stray write from outside fails loudly.

CREATE TABLE __SCHEMA__.assets (
    id               uuid PRIMARY KEY,
    profile          text NOT NULL,
    storage          text NOT NULL,
    storage_key      text NOT NULL,
    state            text NOT NULL DEFAULT 'staged' CHECK (state IN (
                         'staged', 'validating', 'analyzing', 'promoting', 'available',
                         'processing', 'ready', 'degraded', 'quarantined', 'deleted')),
    filename         text,
    content_type     text,
    byte_size        bigint CHECK (byte_size >= 0),
    width            integer,
    height           integer,
    sha256           text,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT assets_storage_key_key UNIQUE (storage, storage_key)
);
-- stuck-work and cleanup scans: by state, oldest first
CREATE INDEX assets_state_changed_idx ON __SCHEMA__.assets (state, state_changed_at);
CREATE INDEX assets_profile_state_idx ON __SCHEMA__.assets (profile, state);

CREATE TABLE __SCHEMA__.variants (
    id               uuid PRIMARY KEY,
    asset_id         uuid NOT NULL REFERENCES __SCHEMA__.assets (id) ON DELETE CASCADE,
    name             text NOT NULL,
    state            text NOT NULL DEFAULT 'planned' CHECK (state IN (
                         'planned', 'queued', 'processing', 'ready', 'failed',
                         'stale', 'missing', 'purged', 'cancelled')),
    recipe_digest    text NOT NULL,
    storage_key      text,
    content_type     text,
    byte_size        bigint CHECK (byte_size >= 0),
    width            integer,
    height           integer,
    reason           text,
    generated_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT variants_asset_name_key UNIQUE (asset_id, name)
);
CREATE UNIQUE INDEX variants_storage_key_idx ON __SCHEMA__.variants (storage_key)
    WHERE storage_key IS NOT NULL;
CREATE INDEX variants_state_changed_idx ON __SCHEMA__.variants (state, state_changed_at);

CREATE TABLE __SCHEMA__.attachments (
    id          uuid PRIMARY KEY,
    -- RESTRICT: an asset row is never dropped while something still holds it
    asset_id    uuid NOT NULL REFERENCES __SCHEMA__.assets (id) ON DELETE RESTRICT,
    owner_type  text NOT NULL,
    owner_id    text NOT NULL,
    slot        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT attachments_owner_slot_key UNIQUE (owner_type, owner_id, slot)
);
CREATE INDEX attachments_asset_idx ON __SCHEMA__.attachments (asset_id);

CREATE TABLE __SCHEMA__.upload_sessions (
    id                  uuid PRIMARY KEY,
    asset_id            uuid NOT NULL REFERENCES __SCHEMA__.assets (id) ON DELETE CASCADE,
    state               text NOT NULL DEFAULT 'initialized' CHECK (state IN (
                            'initialized', 'signed', 'uploading', 'uploaded', 'verifying',
                            'completed', 'failed', 'aborted', 'expired')),
    strategy            text NOT NULL DEFAULT 'presigned_put'
                            CHECK (strategy IN ('presigned_put', 'multipart')),
    storage_key         text NOT NULL,
    filename            text,
    content_type        text,
    byte_size           bigint CHECK (byte_size >= 0),
    checksum            text,
    multipart_upload_id text,
    part_size           bigint,
    parts               jsonb NOT NULL DEFAULT '[]'::jsonb,
    expires_at          timestamptz NOT NULL,
    verified_at         timestamptz,
    reason              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    state_changed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upload_sessions_asset_idx ON __SCHEMA__.upload_sessions (asset_id);
-- the abort lane: open sessions by deadline
CREATE INDEX upload_sessions_open_deadline_idx ON __SCHEMA__.upload_sessions (expires_at)
    WHERE state IN ('initialized', 'signed', 'uploading', 'uploaded', 'verifying');
-- the cleanup lane: finished-badly sessions by age
CREATE INDEX upload_sessions_closed_idx ON __SCHEMA__.upload_sessions (state, state_changed_at)
    WHERE state IN ('failed', 'aborted', 'expired');

-- One row: this schema's identity, part of every arq job id, so a schema that is
-- dropped and made again never reuses the job ids (and stale results) of the old one.
CREATE TABLE __SCHEMA__.instance (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO __SCHEMA__.instance DEFAULT VALUES;

-- The job ledger: a background effect is a row here, written in the transaction
-- that causes it, sent to arq after commit, deleted by the job that succeeds.
CREATE TABLE __SCHEMA__.jobs (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue         text NOT NULL,
    dedupe_key    text,
    status        text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'enqueued', 'discarded')),
    run_after     timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    max_tries     integer NOT NULL CHECK (max_tries >= 1),
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    enqueued_at   timestamptz,
    sent_count    integer NOT NULL DEFAULT 0,
    discarded_at  timestamptz
);
-- at most one unsent job per dedupe key (e.g. one pending render per variant)
CREATE UNIQUE INDEX jobs_pending_dedupe_idx ON __SCHEMA__.jobs (dedupe_key)
    WHERE status = 'pending' AND dedupe_key IS NOT NULL;
CREATE INDEX jobs_pending_idx ON __SCHEMA__.jobs (id) WHERE status = 'pending';
CREATE INDEX jobs_enqueued_idx ON __SCHEMA__.jobs (enqueued_at) WHERE status = 'enqueued';
CREATE INDEX jobs_discarded_idx ON __SCHEMA__.jobs (discarded_at) WHERE status = 'discarded';

-- NOTIFY is delivered only when the inserting transaction commits.
CREATE FUNCTION __SCHEMA__.jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON __SCHEMA__.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.jobs_notify();

-- One row per job attempt: the audit trail of background work.
CREATE TABLE __SCHEMA__.processing_runs (
    id           bigserial PRIMARY KEY,
    job_id       bigint NOT NULL,
    kind         text NOT NULL,
    asset_id     uuid,
    variant      text,
    attempt      integer NOT NULL CHECK (attempt >= 1),
    outcome      text NOT NULL DEFAULT 'running'
                     CHECK (outcome IN ('running', 'succeeded', 'retrying', 'failed', 'abandoned')),
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    duration_ms  integer
);
CREATE INDEX processing_runs_job_idx ON __SCHEMA__.processing_runs (job_id);
CREATE INDEX processing_runs_asset_idx ON __SCHEMA__.processing_runs (asset_id, variant);
CREATE INDEX processing_runs_started_idx ON __SCHEMA__.processing_runs (started_at);
