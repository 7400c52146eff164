-- Every audit query is itself recorded: who asked, which filters (with
-- subscriber identifiers already hashed), and how many records came back.
CREATE TABLE audit_queries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    asked_at   INTEGER NOT NULL,        -- unix microseconds
    caller     TEXT NOT NULL,
    role       TEXT NOT NULL,
    method     TEXT NOT NULL,           -- Query | Stats
    filters    TEXT NOT NULL,           -- JSON, identifiers as keyed hashes
    returned   INTEGER NOT NULL
);
CREATE INDEX audit_log_job ON audit_log (job_id);
CREATE INDEX audit_log_request ON audit_log (request_id);
