-- Retention: records before this position were deleted. Leaf hashes of the
-- tiles cut by the boundary (and by older checkpoints) are kept so what
-- remains still verifies against every signed checkpoint. (SQLite has no
-- partitions; retention deletes rows.)
ALTER TABLE audit_head ADD COLUMN pruned_before INTEGER NOT NULL DEFAULT 0;
CREATE TABLE audit_pruned_leaves (
    leaf_index INTEGER PRIMARY KEY,
    leaf_hash  BLOB NOT NULL
);
CREATE INDEX audit_log_seq_caller ON audit_log (caller, seq);
