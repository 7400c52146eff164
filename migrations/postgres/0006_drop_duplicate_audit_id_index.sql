-- Lookups by audit_id are served by the index behind UNIQUE (audit_id,
-- recorded_at), whose leading column it is; the separate index on audit_id
-- alone was a second copy of the same keys, maintained on every appended
-- record by the journal indexer.
DROP INDEX audit_log_audit_id;
