-- Audit journals: gateways append audit records to a local journal first
-- and index them here afterwards. Each journal's progress is updated in the
-- same transaction as the records it indexes, so a restart resumes exactly
-- where indexing stopped. log_id names this log, so a journal cannot be
-- indexed into another database by mistake.
ALTER TABLE audit_head ADD COLUMN log_id TEXT;
UPDATE audit_head SET log_id = lower(hex(randomblob(16))) WHERE id = 1;
CREATE TABLE audit_journals (
    journal_id TEXT PRIMARY KEY,
    indexed    INTEGER NOT NULL,    -- journal records now in audit_log
    updated_at INTEGER NOT NULL     -- unix microseconds
);
