-- The embedded work queue: one row per enqueued job until it is acknowledged (deleted) or
-- dead-lettered (kept, status 'dead', reason in last_error).
-- AUTOINCREMENT: ids are never reused, so a stale holder's (id, lease_id) can never match a
-- different job.
CREATE TABLE queue_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    -- prost-encoded companion.v1.Job (attempt inside kept equal to the attempt column)
    payload BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    -- 'ready': claimable from available_at_ms; 'processing': leased until locked_until_ms;
    -- 'dead': given up on
    status TEXT NOT NULL CHECK (status IN ('ready', 'processing', 'dead')),
    available_at_ms INTEGER NOT NULL,
    locked_until_ms INTEGER,
    -- bumped by every claim; settling and lease renewal require the claim's value (fencing)
    lease_id INTEGER NOT NULL DEFAULT 0,
    -- claims of the current attempt; over the delivery limit the job is dead-lettered
    deliveries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE INDEX queue_jobs_ready ON queue_jobs (status, available_at_ms, id);
CREATE INDEX queue_jobs_leased ON queue_jobs (status, locked_until_ms);
CREATE INDEX queue_jobs_job_id ON queue_jobs (job_id);
