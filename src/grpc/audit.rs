//! The `simverify.v1.Audit` service: filtered, paged reads of the audit log
//! and statistics. Carriers see only their own records; every query is
//! itself recorded.

use tonic::{Request, Response, Status};

use super::auth::{self, Principal};
use super::status::{internal, invalid_argument};
use crate::audit::log::{self, Signer, TreeView};
use crate::config::Role;
use crate::domain::merkle;
use crate::domain::{
    AuditFilter, AuditRecord, CitizenId, CivilDate, Decision, Field, Msisdn, Purpose, Violation,
};
use crate::proto as pb;
use crate::store::{AuditQueryLog, Store, StoredCheckpoint};
use crate::verifier::Verifier;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

#[derive(Clone)]
pub struct AuditService {
    verifier: Verifier,
    signer: std::sync::Arc<Signer>,
}

impl AuditService {
    pub fn new(verifier: Verifier, signer: std::sync::Arc<Signer>) -> Self {
        Self { verifier, signer }
    }

    fn store(&self) -> &Store {
        self.verifier.store()
    }
}

fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos / 1000))
}

pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn decision_from_pb(v: i32) -> Result<Option<Decision>, Status> {
    Ok(match pb::Decision::try_from(v) {
        Ok(pb::Decision::Unspecified) => None,
        Ok(pb::Decision::Verified) => Some(Decision::Verified),
        Ok(pb::Decision::Mismatch) => Some(Decision::Mismatch),
        Ok(pb::Decision::NotFound) => Some(Decision::NotFound),
        Ok(pb::Decision::Deceased) => Some(Decision::Deceased),
        Ok(pb::Decision::Invalid) => Some(Decision::Invalid),
        Err(_) => return Err(Status::invalid_argument("filter.decision: unknown value")),
    })
}

fn purpose_from_pb(v: i32) -> Result<Option<Purpose>, Status> {
    match v {
        0 => Ok(None),
        v => match pb::Purpose::try_from(v) {
            Ok(_) => Ok(Some(super::convert::purpose_from_pb(
                v,
                Purpose::Activation,
            ))),
            Err(_) => Err(Status::invalid_argument("filter.purpose: unknown value")),
        },
    }
}

/// Turns the wire filter into a store filter: identifiers hashed, and a
/// carrier confined to its own records.
fn filter(
    principal: &Principal,
    f: Option<pb::AuditFilter>,
    verifier: &Verifier,
) -> Result<(AuditFilter, serde_json::Value), Status> {
    let f = f.unwrap_or_default();
    let mut bad = Vec::new();
    let caller = match principal.role {
        Role::Auditor => (!f.carrier_id.is_empty()).then(|| f.carrier_id.clone()),
        Role::Carrier => {
            if !f.carrier_id.is_empty() && f.carrier_id != *principal.carrier_id {
                return Err(Status::permission_denied(
                    "a carrier may only read its own audit records",
                ));
            }
            Some(principal.carrier_id.to_string())
        }
        Role::Admin => {
            return Err(Status::permission_denied(
                "role `admin` may not read the audit log",
            ));
        }
    };
    let lookup_key = match f.id_number.as_str() {
        "" => None,
        s => match CitizenId::parse(s) {
            Ok(id) => Some(verifier.hasher().lookup_key(&id)),
            Err(e) => {
                bad.push(Violation {
                    field: Field::IdNumber,
                    code: e.code(),
                    description: e.to_string(),
                });
                None
            }
        },
    };
    let msisdn_hash = match f.msisdn.as_str() {
        "" => None,
        s => match Msisdn::parse(s) {
            Ok(m) => Some(verifier.hasher().msisdn(&m)),
            Err(e) => {
                bad.push(Violation {
                    field: Field::Msisdn,
                    code: e.code(),
                    description: e.to_string(),
                });
                None
            }
        },
    };
    if !bad.is_empty() {
        return Err(invalid_argument(&bad));
    }
    let out = AuditFilter {
        since: f.since.as_ref().map(micros),
        until: f.until.as_ref().map(micros),
        caller,
        decision: decision_from_pb(f.decision)?,
        purpose: purpose_from_pb(f.purpose)?,
        request_id: (!f.request_id.is_empty()).then(|| f.request_id.clone()),
        job_id: (!f.job_id.is_empty()).then(|| f.job_id.clone()),
        lookup_key,
        msisdn_hash,
    };
    // What gets recorded about the query: no plaintext identifier.
    let recorded = serde_json::json!({
        "since": out.since,
        "until": out.until,
        "carrier_id": out.caller,
        "decision": out.decision.map(Decision::as_str),
        "purpose": out.purpose.map(Purpose::as_str),
        "request_id": out.request_id,
        "job_id": out.job_id,
        "subject_ref": out.lookup_key.map(|k| hex::encode(k.0)),
        "msisdn_ref": out.msisdn_hash.map(|k| hex::encode(k.0)),
    });
    Ok((out, recorded))
}

const TOKEN_PREFIX: &str = "p1.";

fn parse_token(t: &str) -> Result<Option<i64>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    t.strip_prefix(TOKEN_PREFIX)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("page_token: not a token from this gateway"))
}

pub fn record_to_pb(r: AuditRecord) -> pb::AuditRecord {
    use super::convert::{action, decision, field, tier};
    let v = r.verdict;
    pb::AuditRecord {
        audit_id: r.audit_id,
        recorded_at: Some(timestamp(r.recorded_at)),
        caller: r.caller.to_string(),
        request_id: r.request_id,
        job_id: r.job_id.as_deref().unwrap_or_default().to_owned(),
        purpose: super::convert::purpose_to_pb(r.purpose) as i32,
        consent_ref: r.consent_ref.unwrap_or_default(),
        subject_ref: r.lookup_key.map(|k| hex::encode(k.0)).unwrap_or_default(),
        msisdn_ref: r.msisdn_hash.map(|k| hex::encode(k.0)).unwrap_or_default(),
        decision: decision(v.decision) as i32,
        id_number: field(v.id_number),
        full_name: field(v.full_name),
        date_of_birth: field(v.date_of_birth),
        sex: field(v.sex),
        name_tier: tier(v.name_tier) as i32,
        name_score: u32::from(v.name_score),
        recommended_action: action(v.action) as i32,
        reasons: v.reasons.iter().map(|x| x.as_str().to_owned()).collect(),
        mirror_version: r.mirror_version,
        latency_us: r.latency_us,
    }
}

impl AuditService {
    async fn log_query(
        &self,
        p: &Principal,
        method: &str,
        filters: serde_json::Value,
        returned: usize,
    ) -> Result<(), Status> {
        let q = AuditQueryLog {
            asked_at: crate::clock::now_micros(),
            caller: p.carrier_id.to_string(),
            role: p.role.as_str().to_owned(),
            method: method.to_owned(),
            filters: filters.to_string(),
            returned: returned as u64,
        };
        // An unrecorded audit query is not answered.
        self.store()
            .record_audit_query(&q)
            .await
            .map_err(|e| internal(&e))
    }
}

pub fn checkpoint_to_pb(c: &StoredCheckpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        size: c.size,
        root: c.root.to_vec(),
        signed_at_micros: c.signed_at,
        key_id: c.key_id.clone(),
        signature: c.signature.clone(),
        note: merkle::checkpoint_message(c.size, &c.root, c.signed_at),
    }
}

fn log_error(e: log::LogError) -> Status {
    match e {
        log::LogError::Missing(_) => Status::data_loss(e.to_string()),
        e => internal(&e),
    }
}

/// How long an audit read waits for this gateway's journal to be indexed,
/// so that an auditor sees what was answered just before asking.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

impl AuditService {
    /// Waits until what this gateway answered so far is readable from the
    /// store (bounded by [`CATCH_UP`]); returns how many records are still
    /// not indexed.
    async fn caught_up(&self) -> u64 {
        if self.verifier.audit_synced(CATCH_UP).await {
            0
        } else {
            let backlog = self.verifier.audit_backlog();
            tracing::warn!(
                backlog,
                "audit read served while the journal is still being indexed"
            );
            backlog
        }
    }

    async fn checkpoint_of(&self, size: u64) -> Result<StoredCheckpoint, Status> {
        let found = self
            .store()
            .audit_checkpoint((size != 0).then_some(size))
            .await
            .map_err(|e| internal(&e))?;
        found.ok_or_else(|| {
            Status::failed_precondition(if size == 0 {
                "no checkpoint has been published yet".to_owned()
            } else {
                format!("no checkpoint of size {size} was published")
            })
        })
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn checkpoint(
        &self,
        mut request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        let principal = auth::principal(&mut request)?;
        if request.get_ref().fresh {
            if principal.role != Role::Auditor {
                return Err(Status::permission_denied(
                    "only auditors may publish a checkpoint",
                ));
            }
            self.caught_up().await;
            log::publish_checkpoint(self.store(), &self.signer)
                .await
                .map_err(log_error)?;
        }
        Ok(Response::new(checkpoint_to_pb(
            &self.checkpoint_of(0).await?,
        )))
    }

    async fn prove_inclusion(
        &self,
        mut request: Request<pb::InclusionRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let principal = auth::principal(&mut request)?;
        let req = request.into_inner();
        self.caught_up().await;
        let rec = self
            .store()
            .audit_leaf_of(&req.audit_id)
            .await
            .map_err(|e| internal(&e))?
            .filter(|r| {
                principal.role == Role::Auditor || *r.record.caller == *principal.carrier_id
            })
            .ok_or_else(|| Status::not_found("no audit record with that id is visible to you"))?;
        let cp = self.checkpoint_of(req.tree_size).await?;
        if rec.index >= cp.size {
            return Err(Status::failed_precondition(format!(
                "the record (position {}) is newer than the checkpoint of size {}; ask again after the next checkpoint",
                rec.index, cp.size
            )));
        }
        let view = TreeView::load(self.store(), cp.size, &[rec.index])
            .await
            .map_err(log_error)?;
        let path = merkle::inclusion_proof(&view, rec.index, cp.size);
        Ok(Response::new(pb::InclusionProof {
            leaf_index: rec.index,
            leaf: merkle::canonical_bytes(rec.index, &rec.record),
            path: path.iter().map(|h| h.to_vec()).collect(),
            checkpoint: Some(checkpoint_to_pb(&cp)),
            record: Some(record_to_pb(rec.record)),
        }))
    }

    async fn prove_consistency(
        &self,
        mut request: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        auth::principal(&mut request)?;
        let req = request.into_inner();
        if req.first == 0 {
            return Err(Status::invalid_argument(
                "first: the size of a published checkpoint",
            ));
        }
        let first = self.checkpoint_of(req.first).await?;
        let second = self.checkpoint_of(req.second).await?;
        if first.size > second.size {
            return Err(Status::invalid_argument(
                "first must not be larger than second",
            ));
        }
        let view = TreeView::load(self.store(), second.size, &[first.size - 1])
            .await
            .map_err(log_error)?;
        let path = merkle::consistency_proof(&view, first.size, second.size);
        Ok(Response::new(pb::ConsistencyProof {
            first: Some(checkpoint_to_pb(&first)),
            second: Some(checkpoint_to_pb(&second)),
            path: path.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn query(
        &self,
        mut request: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditPage>, Status> {
        let principal = auth::principal(&mut request)?;
        let q = request.into_inner();
        let (f, mut recorded) = filter(&principal, q.filter, &self.verifier)?;
        let after = parse_token(&q.page_token)?;
        let size = match q.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let unindexed = self.caught_up().await;
        let mut rows = self
            .store()
            .query_audit(&f, after, size + 1)
            .await
            .map_err(|e| internal(&e))?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next = if more {
            rows.last().map(|(seq, _)| format!("{TOKEN_PREFIX}{seq:x}"))
        } else {
            None
        };
        recorded["page_token"] = serde_json::Value::String(q.page_token);
        self.log_query(&principal, "Query", recorded, rows.len())
            .await?;
        Ok(Response::new(pb::AuditPage {
            records: rows.into_iter().map(|(_, r)| record_to_pb(r)).collect(),
            next_page_token: next.unwrap_or_default(),
            unindexed_records: unindexed,
        }))
    }

    async fn stats(
        &self,
        mut request: Request<pb::AuditStatsRequest>,
    ) -> Result<Response<pb::AuditStatsResponse>, Status> {
        let principal = auth::principal(&mut request)?;
        let (f, recorded) = filter(&principal, request.into_inner().filter, &self.verifier)?;
        let unindexed = self.caught_up().await;
        let rows = self
            .store()
            .audit_stats(&f)
            .await
            .map_err(|e| internal(&e))?;
        self.log_query(&principal, "Stats", recorded, rows.len())
            .await?;
        Ok(Response::new(pb::AuditStatsResponse {
            rows: rows
                .into_iter()
                .map(|r| pb::AuditStatsRow {
                    carrier_id: r.caller,
                    day: CivilDate::from_unix_days(r.day).to_string(),
                    decision: super::convert::decision(r.decision) as i32,
                    purpose: super::convert::purpose_to_pb(r.purpose) as i32,
                    count: r.count,
                })
                .collect(),
            unindexed_records: unindexed,
        }))
    }
}
