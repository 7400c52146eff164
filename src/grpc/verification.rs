//! The `simverify.v1.Verification` service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Principal};
use super::convert;
use super::limits::Limits;
use crate::domain::{Purpose, request::is_printable_token};
use crate::proto as pb;
use crate::verifier::Verifier;

/// How many batches of one stream are worked on at once. Results still leave
/// in order; the bound is what turns a fast client into back-pressure.
const STREAM_CONCURRENCY: usize = 4;

#[derive(Clone)]
pub struct VerificationService {
    verifier: Verifier,
    limits: Arc<Limits>,
    max_batch_items: usize,
}

impl VerificationService {
    pub fn new(verifier: Verifier, limits: Arc<Limits>, max_batch_items: usize) -> Self {
        Self {
            verifier,
            limits,
            max_batch_items,
        }
    }
}

/// The client's deadline, from the `grpc-timeout` header (e.g. `250m`).
pub fn deadline<T>(req: &Request<T>, start: Instant) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    start.checked_add(d)
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::VerifyBatchResult, Status>> + Send>>;

#[tonic::async_trait]
impl pb::verification_server::Verification for VerificationService {
    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let started = Instant::now();
        let deadline = deadline(&request, started);
        let principal = auth::principal(&request)?;
        let _permit = self.limits.admit(&principal, 1)?;
        let msg = request.into_inner();
        let item = convert::item(&msg, Purpose::Activation);
        let answer = self
            .verifier
            .verify(&principal.carrier_id, item, started, deadline)
            .await?;
        Ok(Response::new(convert::response(answer)))
    }

    type VerifyStreamStream = ResultStream;

    async fn verify_stream(
        &self,
        request: Request<Streaming<pb::VerifyBatch>>,
    ) -> Result<Response<Self::VerifyStreamStream>, Status> {
        let deadline = deadline(&request, Instant::now());
        let principal = auth::principal(&request)?;
        let inbound = request.into_inner();
        let this = self.clone();
        let out = inbound
            .map(move |batch| {
                let this = this.clone();
                let principal = principal.clone();
                async move { this.answer_batch(&principal, batch?, deadline).await }
            })
            .buffered(STREAM_CONCURRENCY)
            // The first error ends the stream: tonic sends it as the status.
            .scan(false, |failed, r| {
                if *failed {
                    return futures_util::future::ready(None);
                }
                *failed = r.is_err();
                futures_util::future::ready(Some(r))
            });
        Ok(Response::new(Box::pin(out)))
    }
}

impl VerificationService {
    async fn answer_batch(
        &self,
        principal: &Principal,
        batch: pb::VerifyBatch,
        deadline: Option<Instant>,
    ) -> Result<pb::VerifyBatchResult, Status> {
        let started = Instant::now();
        if batch.requests.len() > self.max_batch_items {
            return Err(Status::invalid_argument(format!(
                "batch {} has {} requests; at most {} are allowed per message",
                batch.batch_seq,
                batch.requests.len(),
                self.max_batch_items
            )));
        }
        let job_id = match batch.job_id.as_str() {
            "" => None,
            j if is_printable_token(j, 64) => Some(j),
            _ => {
                return Err(Status::invalid_argument(
                    "job_id: must be 1–64 printable ASCII characters",
                ));
            }
        };
        let _permit = self.limits.admit(principal, batch.requests.len() as u64)?;
        let items: Vec<_> = batch
            .requests
            .iter()
            .map(|r| convert::item(r, Purpose::Cleanup))
            .collect();
        let answers = self
            .verifier
            .verify_batch(&principal.carrier_id, job_id, &items, started, deadline)
            .await?;
        Ok(pb::VerifyBatchResult {
            batch_seq: batch.batch_seq,
            results: answers.into_iter().map(convert::response).collect(),
        })
    }
}
