-- Mirror of the population database: keyed, record-bound hashes only.
-- No column holds a plaintext ID number, name or date of birth.
CREATE TABLE mirror_records (
    lookup_key     BYTEA PRIMARY KEY,       -- HMAC(key, canonical ID), 32 bytes
    key_id         SMALLINT NOT NULL,       -- which hash key produced the hashes
    name_hash      BYTEA NOT NULL,          -- canonical full name, 16 bytes
    folded_hash    BYTEA NOT NULL,          -- diacritic-folded full name
    token_hashes   BYTEA NOT NULL,          -- distinct folded tokens, 16 bytes each
    dob_hash       BYTEA NOT NULL,
    dob_precision  SMALLINT NOT NULL,       -- 0 = day, 1 = year only
    sex_hash       BYTEA NOT NULL,
    status         SMALLINT NOT NULL,       -- 0 = active, 1 = deceased
    source_version BIGINT NOT NULL,         -- import that last changed the row
    updated_at     BIGINT NOT NULL          -- unix microseconds
);
CREATE INDEX mirror_records_source_version ON mirror_records (source_version);

-- Deleted records, kept so running gateways can invalidate cached entries.
CREATE TABLE mirror_deletions (
    lookup_key BYTEA NOT NULL,
    version    BIGINT NOT NULL
);
CREATE INDEX mirror_deletions_version ON mirror_deletions (version);

-- One row per import; the mirror version is the newest finished import.
CREATE TABLE mirror_imports (
    version       BIGINT PRIMARY KEY,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    source        TEXT NOT NULL,
    rows_upserted BIGINT NOT NULL DEFAULT 0,
    rows_deleted  BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0
);

-- Fingerprint of the hash key the mirror was built with, so a gateway started
-- with another key refuses to serve instead of answering NOT_FOUND to everyone.
CREATE TABLE key_fingerprints (
    key_id      SMALLINT PRIMARY KEY,
    fingerprint BYTEA NOT NULL
);

-- Durable audit log: one row per answered verification, append-only.
CREATE TABLE audit_log (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    audit_id       TEXT NOT NULL UNIQUE,     -- UUIDv7, time-ordered
    recorded_at    BIGINT NOT NULL,          -- unix microseconds
    caller         TEXT NOT NULL,            -- principal that asked
    request_id     TEXT NOT NULL,
    job_id         TEXT,
    purpose        SMALLINT NOT NULL,
    consent_ref    TEXT,
    lookup_key     BYTEA,                    -- NULL when the ID was invalid
    msisdn_hash    BYTEA,                    -- NULL when the MSISDN was invalid
    key_id         SMALLINT NOT NULL,
    decision       SMALLINT NOT NULL,
    id_result      SMALLINT NOT NULL,
    name_result    SMALLINT NOT NULL,
    dob_result     SMALLINT NOT NULL,
    sex_result     SMALLINT NOT NULL,
    name_tier      SMALLINT,
    name_score     SMALLINT NOT NULL,
    action         SMALLINT NOT NULL,
    reasons        INTEGER NOT NULL,         -- bit set of reason codes
    mirror_version BIGINT NOT NULL,
    latency_us     INTEGER NOT NULL
);
CREATE INDEX audit_log_recorded_at ON audit_log (recorded_at);
CREATE INDEX audit_log_lookup_key ON audit_log (lookup_key);
CREATE INDEX audit_log_msisdn_hash ON audit_log (msisdn_hash);
CREATE INDEX audit_log_caller_time ON audit_log (caller, recorded_at);
