-- Tamper evidence: every audit record is a leaf of a Merkle tree (RFC 6962
-- hashing). leaf_index is the record's dense position in the one shared log;
-- leaf_hash = SHA-256(0x00 || canonical record incl. its position).
ALTER TABLE audit_log ADD COLUMN leaf_index BIGINT;
ALTER TABLE audit_log ADD COLUMN leaf_hash BYTEA;
UPDATE audit_log SET leaf_index = r.i
FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) - 1 AS i FROM audit_log) r
WHERE audit_log.seq = r.seq;
CREATE UNIQUE INDEX audit_log_leaf_index ON audit_log (leaf_index);

-- The log's size; bumped in the same transaction as the records it counts.
-- Its row lock serialises writers, so several gateways share one sequence.
CREATE TABLE audit_head (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL
);
INSERT INTO audit_head (id, size) SELECT 1, COUNT(*) FROM audit_log;

-- Hash of every complete, aligned run of 256 leaves.
CREATE TABLE audit_tiles (
    tile BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL
);

-- Signed checkpoints: (size, root, time) under the gateway's Ed25519 key.
CREATE TABLE audit_checkpoints (
    size      BIGINT PRIMARY KEY,
    root      BYTEA NOT NULL,
    signed_at BIGINT NOT NULL,
    key_id    TEXT NOT NULL,
    signature BYTEA NOT NULL
);
