-- Audit records partitioned by month of recorded_at (UTC), so retention can
-- drop whole months. The gateway creates monthly partitions ahead of time;
-- the default partition catches anything outside them.
ALTER TABLE audit_log RENAME TO audit_log_unpartitioned;
ALTER TABLE audit_log_unpartitioned RENAME CONSTRAINT audit_log_pkey TO audit_log_unpartitioned_pkey;
ALTER TABLE audit_log_unpartitioned RENAME CONSTRAINT audit_log_audit_id_key TO audit_log_unpartitioned_audit_id_key;
DROP INDEX audit_log_recorded_at;
DROP INDEX audit_log_lookup_key;
DROP INDEX audit_log_msisdn_hash;
DROP INDEX audit_log_caller_time;
DROP INDEX audit_log_job;
DROP INDEX audit_log_request;
DROP INDEX audit_log_leaf_index;

CREATE SEQUENCE audit_log_seq_v2;
SELECT setval('audit_log_seq_v2', COALESCE((SELECT MAX(seq) FROM audit_log_unpartitioned), 0) + 1, false);

CREATE TABLE audit_log (
    seq            BIGINT NOT NULL DEFAULT nextval('audit_log_seq_v2'),
    audit_id       TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    caller         TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    job_id         TEXT,
    purpose        SMALLINT NOT NULL,
    consent_ref    TEXT,
    lookup_key     BYTEA,
    msisdn_hash    BYTEA,
    key_id         SMALLINT NOT NULL,
    decision       SMALLINT NOT NULL,
    id_result      SMALLINT NOT NULL,
    name_result    SMALLINT NOT NULL,
    dob_result     SMALLINT NOT NULL,
    sex_result     SMALLINT NOT NULL,
    name_tier      SMALLINT,
    name_score     SMALLINT NOT NULL,
    action         SMALLINT NOT NULL,
    reasons        INTEGER NOT NULL,
    mirror_version BIGINT NOT NULL,
    latency_us     INTEGER NOT NULL,
    leaf_index     BIGINT NOT NULL,
    leaf_hash      BYTEA NOT NULL,
    PRIMARY KEY (recorded_at, seq),
    UNIQUE (audit_id, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
CREATE INDEX audit_log_seq ON audit_log (seq);
CREATE INDEX audit_log_leaf_index ON audit_log (leaf_index);
CREATE INDEX audit_log_audit_id ON audit_log (audit_id);
CREATE INDEX audit_log_lookup_key ON audit_log (lookup_key, seq);
CREATE INDEX audit_log_msisdn_hash ON audit_log (msisdn_hash, seq);
CREATE INDEX audit_log_caller_seq ON audit_log (caller, seq);
CREATE INDEX audit_log_job ON audit_log (job_id, seq);
CREATE INDEX audit_log_request ON audit_log (request_id);

INSERT INTO audit_log (seq, audit_id, recorded_at, caller, request_id, job_id, purpose, consent_ref,
    lookup_key, msisdn_hash, key_id, decision, id_result, name_result, dob_result, sex_result, name_tier,
    name_score, action, reasons, mirror_version, latency_us, leaf_index, leaf_hash)
SELECT seq, audit_id, recorded_at, caller, request_id, job_id, purpose, consent_ref, lookup_key,
    msisdn_hash, key_id, decision, id_result, name_result, dob_result, sex_result, name_tier, name_score,
    action, reasons, mirror_version, latency_us, leaf_index, COALESCE(leaf_hash, '\x'::bytea)
FROM audit_log_unpartitioned;
DROP TABLE audit_log_unpartitioned;

-- Retention: records before this position were dropped. Leaf hashes of the
-- tiles cut by the boundary (and by older checkpoints) are kept so what
-- remains still verifies against every signed checkpoint.
ALTER TABLE audit_head ADD COLUMN pruned_before BIGINT NOT NULL DEFAULT 0;
CREATE TABLE audit_pruned_leaves (
    leaf_index BIGINT PRIMARY KEY,
    leaf_hash  BYTEA NOT NULL
);
