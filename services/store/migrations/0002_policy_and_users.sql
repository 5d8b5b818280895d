-- Admin policy, the user directory and users' priority topics. Portable SQL: the same file runs
-- on SQLite and PostgreSQL (TEXT ids, BIGINT epoch milliseconds, BOOLEAN).

-- One value per (level, scope, setting). `value` is JSON (`true`, `{"enabled":true,"target":"es"}`,
-- `["en","es"]`); the setting names are not constrained here so a new setting needs no migration.
CREATE TABLE policies (
    tenant_id  TEXT NOT NULL,
    level      TEXT NOT NULL CHECK (level IN ('account', 'site', 'group', 'user')),
    scope_id   TEXT NOT NULL,
    setting    TEXT NOT NULL,
    value      TEXT NOT NULL,
    locked     BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, level, scope_id, setting)
);

-- Where each user sits in the hierarchy, and the language they want translations in.
CREATE TABLE users (
    tenant_id          TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    account_id         TEXT,
    site_id            TEXT,
    group_id           TEXT,
    preferred_language TEXT,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- A user's priority topics: voicemails that match one are flagged for them.
CREATE TABLE intents (
    tenant_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, name)
);
