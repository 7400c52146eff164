//! The `simverify.v1.Verification` service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::auth::{self, Principal};
use super::convert;
use super::limits::Limits;
use super::wire::{VerifyBatchIn, VerifyRequestIn};
use crate::clock::Moment;
use crate::domain::{Purpose, request::is_printable_token};
use crate::proto as pb;
use crate::verifier::Verifier;

/// How many batches of one stream are worked on at once. Results still leave
/// in order; the bound is what turns a fast client into back-pressure.
const STREAM_CONCURRENCY: usize = 8;

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
impl pb::gateway::verification_server::Verification for VerificationService {
    async fn verify(
        &self,
        mut request: Request<VerifyRequestIn>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let started = Moment::now();
        let deadline = deadline(&request, started.instant);
        let principal = auth::principal(&mut request)?;
        let _permit = self.limits.admit(&principal, 1, started)?;
        let msg = request.into_inner();
        let text = msg.text();
        let item = convert::item(&text, Purpose::Activation);
        let answer = self
            .verifier
            .verify(&principal.carrier_id, item, started, deadline)
            .await?;
        Ok(Response::new(convert::response(answer)))
    }

    type VerifyStreamStream = ResultStream;

    async fn verify_stream(
        &self,
        mut request: Request<Streaming<VerifyBatchIn>>,
    ) -> Result<Response<Self::VerifyStreamStream>, Status> {
        let deadline = deadline(&request, Instant::now());
        let principal = auth::principal(&mut request)?;
        let inbound = request.into_inner();
        let this = self.clone();
        // The batches' tasks stay inside the call's span, if it has one.
        let span = tracing::Span::current();
        let out = inbound
            .map(move |batch| {
                let started = Moment::now();
                // Checks and admission run here, in the stream's own task and
                // in arrival order, so a carrier's limits are charged batch by
                // batch as the batches came.
                let admitted =
                    batch.and_then(|b| Ok((this.admit_batch(&principal, &b, started)?, b)));
                let (permit, batch) = match admitted {
                    Ok(a) => a,
                    Err(e) => return Worker::Done(Some(Err(e))),
                };
                let this = this.clone();
                let carrier = principal.carrier_id.clone();
                // The work runs as a task of its own: `buffered` alone would
                // poll every batch from the stream's one task, so that one
                // stream could never use more than one core.
                Worker::Running(tokio::spawn(
                    async move {
                        let _permit = permit;
                        this.answer_batch(&carrier, batch, started, deadline).await
                    }
                    .instrument(span.clone()),
                ))
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

type BatchResult = Result<pb::VerifyBatchResult, Status>;

/// One batch of a stream: refused at admission, or running as its own task.
/// The task is aborted if the stream is dropped before it is answered: a
/// batch nobody will receive must stop at its audit append, as it did when
/// it ran inside the stream's task, so that it is not recorded as answered.
enum Worker {
    Done(Option<BatchResult>),
    Running(tokio::task::JoinHandle<BatchResult>),
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Self::Running(task) = self {
            task.abort();
        }
    }
}

impl std::future::Future for Worker {
    type Output = BatchResult;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<BatchResult> {
        match &mut *self {
            Self::Done(result) => {
                std::task::Poll::Ready(result.take().expect("a finished batch is not polled again"))
            }
            // Only a panic gets here as an error: the task is aborted only on drop.
            Self::Running(task) => Pin::new(task)
                .poll(cx)
                .map(|joined| joined.unwrap_or_else(|e| Err(super::status::internal(&e)))),
        }
    }
}

impl VerificationService {
    /// Checks a batch's size and job id and charges it to the carrier.
    fn admit_batch(
        &self,
        principal: &Principal,
        batch: &VerifyBatchIn,
        at: Moment,
    ) -> Result<OwnedSemaphorePermit, Status> {
        if batch.requests.len() > self.max_batch_items {
            return Err(Status::invalid_argument(format!(
                "batch {} has {} requests; at most {} are allowed per message",
                batch.batch_seq,
                batch.requests.len(),
                self.max_batch_items
            )));
        }
        if !batch.job_id.is_empty() && !batch.job_id().is_some_and(|j| is_printable_token(j, 64)) {
            return Err(Status::invalid_argument(
                "job_id: must be 1–64 printable ASCII characters",
            ));
        }
        self.limits
            .admit(principal, batch.requests.len() as u64, at)
    }

    /// Answers an admitted batch.
    async fn answer_batch(
        &self,
        carrier: &Arc<str>,
        batch: VerifyBatchIn,
        started: Moment,
        deadline: Option<Instant>,
    ) -> BatchResult {
        // Admission refused a job id that is not printable ASCII.
        let job_id = batch.job_id().filter(|j| !j.is_empty());
        let texts: Vec<_> = batch.requests.iter().map(VerifyRequestIn::text).collect();
        let items: Vec<_> = texts
            .iter()
            .map(|t| convert::item(t, Purpose::Cleanup))
            .collect();
        let answers = self
            .verifier
            .verify_batch(carrier, job_id, &items, started, deadline)
            .await?;
        Ok(pb::VerifyBatchResult {
            batch_seq: batch.batch_seq,
            results: answers.into_iter().map(convert::response).collect(),
        })
    }
}
