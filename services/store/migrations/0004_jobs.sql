-- Tenancy and processing jobs. Portable SQL: the same file runs on SQLite and PostgreSQL.

-- The PBX's own id of a recording, unique within its tenant; `recordings.id` stays the internal
-- key. Rows written before tenancy (the CLI's, tenant `local`) keep their id as their external id.
ALTER TABLE recordings ADD COLUMN external_id TEXT;
UPDATE recordings SET external_id = id;
CREATE UNIQUE INDEX recordings_by_external_id ON recordings (tenant_id, external_id);

-- The file name the PBX gave, and where the audio is: a URI (file:///…), or NULL when the audio
-- was submitted inline and is kept in `recording_audio`.
ALTER TABLE recordings ADD COLUMN filename TEXT;
ALTER TABLE recordings ADD COLUMN source_uri TEXT;

-- Listing a tenant's recordings newest first.
CREATE INDEX recordings_by_tenant ON recordings (tenant_id, created_at_ms, id);

-- Audio submitted inline. BYTEA is PostgreSQL's binary type; SQLite gives that name NUMERIC
-- affinity, which stores a bound blob unchanged.
CREATE TABLE recording_audio (
    recording_key TEXT PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    audio         BYTEA NOT NULL
);

-- One processing request of a recording: its submission, then each explicit reprocessing.
-- `seq` numbers a recording's jobs (1, 2, ...); the highest is its latest job.
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    recording_key TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'processing', 'done', 'failed')),
    attempts      BIGINT NOT NULL,
    error_kind    TEXT,
    error_message TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE UNIQUE INDEX jobs_by_recording ON jobs (recording_key, seq);
CREATE INDEX jobs_by_state ON jobs (state);

-- The job a result came from: a redelivered job never writes a second result. Results written
-- by the CLI have no job (NULLs do not collide in a unique index on either database).
ALTER TABLE results ADD COLUMN job_id TEXT;
CREATE UNIQUE INDEX results_by_job ON results (job_id);
