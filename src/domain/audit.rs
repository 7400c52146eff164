//! The audit record: who verified whom (keyed hashes), when, why, and with
//! what outcome. Plain data; persistence lives in `store`, batching in `audit`.

use std::sync::Arc;

use super::hashing::{LookupKey, MsisdnHash};
use super::request::Purpose;
use super::verdict::{Decision, FieldResult, NameTier, Reasons, RecommendedAction, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// UUIDv7 text: time-ordered and unique without coordination.
    pub audit_id: String,
    /// Unix microseconds when the answer was decided.
    pub recorded_at: i64,
    /// The authenticated principal (never a value the client wrote in a field).
    /// Shared: every record of a batch has the same one.
    pub caller: Arc<str>,
    pub request_id: String,
    /// Shared, like `caller`.
    pub job_id: Option<Arc<str>>,
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

/// A record body that does not decode: the bytes were damaged or written by
/// something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed audit record ({0})")]
pub struct RecordDecodeError(pub &'static str);

const NONE_LEN: u32 = u32::MAX;

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    put_bytes(out, s.map(str::as_bytes));
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend(NONE_LEN.to_be_bytes()),
        Some(b) => {
            out.extend((b.len() as u32).to_be_bytes());
            out.extend(b);
        }
    }
}

impl AuditRecord {
    /// Appends the record's body: every field in a fixed order, integers
    /// big-endian, strings and byte strings length-prefixed (`u32::MAX`
    /// for absent). This is both what the audit journal stores and what a
    /// Merkle leaf commits to (after its version byte and position), so the
    /// layout is part of the audit format: never change it, only version it.
    pub fn encode_body(&self, o: &mut Vec<u8>) {
        put_str(o, Some(&self.audit_id));
        o.extend(self.recorded_at.to_be_bytes());
        put_str(o, Some(&self.caller));
        put_str(o, Some(&self.request_id));
        put_str(o, self.job_id.as_deref());
        o.extend(self.purpose.as_i16().to_be_bytes());
        put_str(o, self.consent_ref.as_deref());
        put_bytes(o, self.lookup_key.as_ref().map(|k| &k.0[..]));
        put_bytes(o, self.msisdn_hash.as_ref().map(|k| &k.0[..]));
        o.extend(self.key_id.to_be_bytes());
        let v = &self.verdict;
        for x in [
            v.decision.as_i16(),
            v.id_number.as_i16(),
            v.full_name.as_i16(),
            v.date_of_birth.as_i16(),
            v.sex.as_i16(),
        ] {
            o.extend(x.to_be_bytes());
        }
        o.extend(v.name_tier.map_or(0, |t| t.as_i16()).to_be_bytes());
        o.push(v.name_score);
        o.extend(v.action.as_i16().to_be_bytes());
        o.extend(v.reasons.bits().to_be_bytes());
        o.extend(self.mirror_version.to_be_bytes());
        o.extend(self.latency_us.to_be_bytes());
    }

    /// The inverse of [`AuditRecord::encode_body`]; the whole of `b` must be
    /// one body.
    pub fn decode_body(b: &[u8]) -> Result<Self, RecordDecodeError> {
        let mut r = Reader(b);
        let field = |v: i16, what| FieldResult::from_i16(v).ok_or(RecordDecodeError(what));
        let rec = AuditRecord {
            audit_id: r.string("audit_id")?,
            recorded_at: i64::from_be_bytes(r.array("recorded_at")?),
            caller: r.opt_shared("caller")?.ok_or(RecordDecodeError("caller"))?,
            request_id: r.string("request_id")?,
            job_id: r.opt_shared("job_id")?,
            purpose: Purpose::from_i16(r.i16("purpose")?).ok_or(RecordDecodeError("purpose"))?,
            consent_ref: r.opt_string("consent_ref")?,
            lookup_key: r.opt_array("lookup_key")?.map(LookupKey),
            msisdn_hash: r.opt_array("msisdn_hash")?.map(MsisdnHash),
            key_id: u16::from_be_bytes(r.array("key_id")?),
            verdict: Verdict {
                decision: Decision::from_i16(r.i16("decision")?)
                    .ok_or(RecordDecodeError("decision"))?,
                id_number: field(r.i16("id_result")?, "id_result")?,
                full_name: field(r.i16("name_result")?, "name_result")?,
                date_of_birth: field(r.i16("dob_result")?, "dob_result")?,
                sex: field(r.i16("sex_result")?, "sex_result")?,
                name_tier: match r.i16("name_tier")? {
                    0 => None,
                    t => Some(NameTier::from_i16(t).ok_or(RecordDecodeError("name_tier"))?),
                },
                name_score: r.array::<1>("name_score")?[0],
                action: RecommendedAction::from_i16(r.i16("action")?)
                    .ok_or(RecordDecodeError("action"))?,
                reasons: Reasons::from_bits(u32::from_be_bytes(r.array("reasons")?)),
            },
            mirror_version: i64::from_be_bytes(r.array("mirror_version")?),
            latency_us: u32::from_be_bytes(r.array("latency_us")?),
        };
        if !r.0.is_empty() {
            return Err(RecordDecodeError("trailing bytes"));
        }
        Ok(rec)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordDecodeError> {
        if self.0.len() < n {
            return Err(RecordDecodeError(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordDecodeError> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, RecordDecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn opt_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, RecordDecodeError> {
        match u32::from_be_bytes(self.array(what)?) {
            NONE_LEN => Ok(None),
            n => self.take(n as usize, what).map(Some),
        }
    }

    fn opt_str(&mut self, what: &'static str) -> Result<Option<&'a str>, RecordDecodeError> {
        self.opt_bytes(what)?
            .map(|b| std::str::from_utf8(b).map_err(|_| RecordDecodeError(what)))
            .transpose()
    }

    fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, RecordDecodeError> {
        Ok(self.opt_str(what)?.map(str::to_owned))
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordDecodeError> {
        self.opt_string(what)?.ok_or(RecordDecodeError(what))
    }

    /// Straight into a shared string: no `String` on the way.
    fn opt_shared(&mut self, what: &'static str) -> Result<Option<Arc<str>>, RecordDecodeError> {
        Ok(self.opt_str(what)?.map(Arc::from))
    }

    fn opt_array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<Option<[u8; N]>, RecordDecodeError> {
        self.opt_bytes(what)?
            .map(|b| b.try_into().map_err(|_| RecordDecodeError(what)))
            .transpose()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verdict::Reason;
    use proptest::prelude::*;

    fn record(job: Option<&str>, keys: bool) -> AuditRecord {
        let mut reasons = Reasons::default();
        reasons.insert(Reason::IdSexDigitConflict);
        AuditRecord {
            audit_id: "019a0000-0000-7000-8000-000000000001".into(),
            recorded_at: 1_790_000_000_123_456,
            caller: "carrier-a".into(),
            request_id: "req-1".into(),
            job_id: job.map(Into::into),
            purpose: Purpose::Cleanup,
            consent_ref: None,
            lookup_key: keys.then_some(LookupKey([7; 32])),
            msisdn_hash: keys.then_some(MsisdnHash([9; 32])),
            key_id: 1,
            verdict: Verdict {
                decision: Decision::Mismatch,
                id_number: FieldResult::Match,
                full_name: FieldResult::Mismatch,
                date_of_birth: FieldResult::Match,
                sex: FieldResult::NotProvided,
                name_tier: Some(NameTier::DiacriticsOnly),
                name_score: 100,
                action: RecommendedAction::UpdateSubscriberRecord,
                reasons,
            },
            mirror_version: 3,
            latency_us: 250,
        }
    }

    #[test]
    fn the_leaf_encoding_is_pinned() {
        // Leaves already in audit logs commit to this exact layout: a
        // change here breaks every existing proof.
        let leaf = crate::domain::merkle::leaf_hash(5, &record(Some("job-1"), true));
        assert_eq!(
            hex::encode(leaf),
            "9dde3b5651516844acf1f7dea57d415cb0f7600fbeb87c93b8700379c2cb4320"
        );
    }

    #[test]
    fn bodies_round_trip_and_reject_damage() {
        for r in [record(Some("job-1"), true), record(None, false)] {
            let mut b = Vec::new();
            r.encode_body(&mut b);
            assert_eq!(AuditRecord::decode_body(&b).unwrap(), r);
            for cut in [0, 1, b.len() / 2, b.len() - 1] {
                assert!(AuditRecord::decode_body(&b[..cut]).is_err());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(AuditRecord::decode_body(&longer).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            id in "[ -~]{0,40}", caller in "[ -~]{1,64}", req in "[ -~]{0,64}",
            job in proptest::option::of("[ -~]{1,64}"), consent in proptest::option::of("[ -~]{1,64}"),
            at in any::<i64>(), mv in any::<i64>(), lat in any::<u32>(), score in 0u8..=100,
            bits in any::<u32>(), keys in any::<bool>(),
        ) {
            let mut r = record(job.as_deref(), keys);
            r.audit_id = id;
            r.caller = caller.into();
            r.request_id = req;
            r.consent_ref = consent;
            r.recorded_at = at;
            r.mirror_version = mv;
            r.latency_us = lat;
            r.verdict.name_score = score;
            r.verdict.reasons = Reasons::from_bits(bits);
            let mut b = Vec::new();
            r.encode_body(&mut b);
            prop_assert_eq!(AuditRecord::decode_body(&b).unwrap(), r);
        }
    }
}
