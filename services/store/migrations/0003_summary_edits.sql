-- Users' edits of a call summary. The generated summary stays in `results`; every edit is a new
-- version here, never an overwrite, so the history of what the model wrote and what people
-- changed is kept.
CREATE TABLE summary_edits (
    recording_id TEXT NOT NULL REFERENCES recordings (id),
    version      BIGINT NOT NULL,
    summary_json TEXT NOT NULL,
    -- The language the edited text is written in, as detected from it (NULL: could not tell).
    language     TEXT,
    author       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (recording_id, version)
);
