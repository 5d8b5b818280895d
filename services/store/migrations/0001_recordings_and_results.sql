-- Recordings and the results derived from them. Portable SQL: the same file runs on SQLite and
-- PostgreSQL (TEXT ids, BIGINT epoch milliseconds, DOUBLE PRECISION, BOOLEAN).

CREATE TABLE recordings (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    user_id       TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('voicemail', 'call')),
    source        TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX recordings_by_user ON recordings (tenant_id, user_id, created_at_ms);

-- Every processing run adds a version; a result is never overwritten.
CREATE TABLE results (
    recording_id         TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    version              INTEGER NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    duration_s           DOUBLE PRECISION,
    speech               BOOLEAN,
    language             TEXT,
    language_probability DOUBLE PRECISION,
    transcript           TEXT,
    result_json          TEXT,
    error_kind           TEXT,
    error_message        TEXT,
    created_at_ms        BIGINT NOT NULL,
    PRIMARY KEY (recording_id, version)
);
