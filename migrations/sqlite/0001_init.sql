-- Mirror of the population database: keyed, record-bound hashes only.
-- No column holds a plaintext ID number, name or date of birth.
CREATE TABLE mirror_records (
    lookup_key     BLOB PRIMARY KEY,        -- HMAC(key, canonical ID), 32 bytes
    key_id         INTEGER NOT NULL,        -- which hash key produced the hashes
    name_hash      BLOB NOT NULL,           -- canonical full name, 16 bytes
    folded_hash    BLOB NOT NULL,           -- diacritic-folded full name
    token_hashes   BLOB NOT NULL,           -- distinct folded tokens, 16 bytes each
    dob_hash       BLOB NOT NULL,
    dob_precision  INTEGER NOT NULL,        -- 0 = day, 1 = year only
    sex_hash       BLOB NOT NULL,
    status         INTEGER NOT NULL,        -- 0 = active, 1 = deceased
    source_version INTEGER NOT NULL,        -- import that last changed the row
    updated_at     INTEGER NOT NULL         -- unix microseconds
) WITHOUT ROWID;
CREATE INDEX mirror_records_source_version ON mirror_records (source_version);

-- Deleted records, kept so running gateways can invalidate cached entries.
CREATE TABLE mirror_deletions (
    lookup_key BLOB NOT NULL,
    version    INTEGER NOT NULL
);
CREATE INDEX mirror_deletions_version ON mirror_deletions (version);

-- One row per import; the mirror version is the newest finished import.
CREATE TABLE mirror_imports (
    version       INTEGER PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    source        TEXT NOT NULL,
    rows_upserted INTEGER NOT NULL DEFAULT 0,
    rows_deleted  INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0
);

-- Fingerprint of the hash key the mirror was built with, so a gateway started
-- with another key refuses to serve instead of answering NOT_FOUND to everyone.
CREATE TABLE key_fingerprints (
    key_id      INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL
);

-- Durable audit log: one row per answered verification, append-only.
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id       TEXT NOT NULL UNIQUE,     -- UUIDv7, time-ordered
    recorded_at    INTEGER NOT NULL,         -- unix microseconds
    caller         TEXT NOT NULL,            -- principal that asked
    request_id     TEXT NOT NULL,
    job_id         TEXT,
    purpose        INTEGER NOT NULL,
    consent_ref    TEXT,
    lookup_key     BLOB,                     -- NULL when the ID was invalid
    msisdn_hash    BLOB,                     -- NULL when the MSISDN was invalid
    key_id         INTEGER NOT NULL,
    decision       INTEGER NOT NULL,
    id_result      INTEGER NOT NULL,
    name_result    INTEGER NOT NULL,
    dob_result     INTEGER NOT NULL,
    sex_result     INTEGER NOT NULL,
    name_tier      INTEGER,
    name_score     INTEGER NOT NULL,
    action         INTEGER NOT NULL,
    reasons        INTEGER NOT NULL,         -- bit set of reason codes
    mirror_version INTEGER NOT NULL,
    latency_us     INTEGER NOT NULL
);
CREATE INDEX audit_log_recorded_at ON audit_log (recorded_at);
CREATE INDEX audit_log_lookup_key ON audit_log (lookup_key);
CREATE INDEX audit_log_msisdn_hash ON audit_log (msisdn_hash);
CREATE INDEX audit_log_caller_time ON audit_log (caller, recorded_at);
