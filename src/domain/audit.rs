//! The audit record: who verified whom (keyed hashes), when, why, and with
//! what outcome. Plain data; persistence lives in `store`, batching in `audit`.

use super::hashing::{LookupKey, MsisdnHash};
use super::request::Purpose;
use super::verdict::Verdict;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// UUIDv7 text: time-ordered and unique without coordination.
    pub audit_id: String,
    /// Unix microseconds when the answer was decided.
    pub recorded_at: i64,
    /// The authenticated principal (never a value the client wrote in a field).
    pub caller: String,
    pub request_id: String,
    pub job_id: Option<String>,
    pub purpose: Purpose,
    pub consent_ref: Option<String>,
    /// `None` when the request was invalid before an ID could be parsed.
    pub lookup_key: Option<LookupKey>,
    pub msisdn_hash: Option<MsisdnHash>,
    pub key_id: u16,
    pub verdict: Verdict,
    pub mirror_version: i64,
    pub latency_us: u32,
}

/// Which audit records an auditor asks for. Identities are keyed hashes by
/// the time a filter exists; the plaintext never gets this far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Unix microseconds, inclusive.
    pub since: Option<i64>,
    /// Unix microseconds, exclusive.
    pub until: Option<i64>,
    pub caller: Option<String>,
    pub decision: Option<super::verdict::Decision>,
    pub purpose: Option<Purpose>,
    pub request_id: Option<String>,
    pub job_id: Option<String>,
    pub lookup_key: Option<LookupKey>,
    pub msisdn_hash: Option<MsisdnHash>,
}

/// One row of audit statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStatsRow {
    pub caller: String,
    /// Days since 1970-01-01 in Vietnam time.
    pub day: i64,
    pub decision: super::verdict::Decision,
    pub purpose: Purpose,
    pub count: u64,
}
