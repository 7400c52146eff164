-- Subscriber lookups in the audit log index an 8-byte prefix of the keyed
-- hash instead of all 32 bytes. The keys are random, so every appended record
-- lands on a random page of each of these two indexes; at less than half the
-- size, more of them stays in the page cache while the journal is indexed.
-- Queries match the prefix through the index and then the whole key, so a
-- shared prefix (one in 2^64 pairs) costs a row read, never a wrong answer.
DROP INDEX audit_log_lookup_key;
DROP INDEX audit_log_msisdn_hash;
CREATE INDEX audit_log_lookup_prefix ON audit_log (substr(lookup_key, 1, 8));
CREATE INDEX audit_log_msisdn_prefix ON audit_log (substr(msisdn_hash, 1, 8));
