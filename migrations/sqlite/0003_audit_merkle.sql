-- Tamper evidence: every audit record is a leaf of a Merkle tree (RFC 6962
-- hashing). leaf_index is the record's dense position in the one shared log;
-- leaf_hash = SHA-256(0x00 || canonical record incl. its position).
ALTER TABLE audit_log ADD COLUMN leaf_index INTEGER;
ALTER TABLE audit_log ADD COLUMN leaf_hash BLOB;
UPDATE audit_log SET leaf_index = (SELECT COUNT(*) FROM audit_log a WHERE a.seq < audit_log.seq);
CREATE UNIQUE INDEX audit_log_leaf_index ON audit_log (leaf_index);

-- The log's size; bumped in the same transaction as the records it counts.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL
);
INSERT INTO audit_head (id, size) SELECT 1, COUNT(*) FROM audit_log;

-- Hash of every complete, aligned run of 256 leaves.
CREATE TABLE audit_tiles (
    tile INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);

-- Signed checkpoints: (size, root, time) under the gateway's Ed25519 key.
CREATE TABLE audit_checkpoints (
    size      INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    signed_at INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL
);
