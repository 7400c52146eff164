//! Group commit for audit records.
//!
//! Callers hand records to one writer task and wait for an acknowledgement.
//! The task drains everything queued since its last commit into a single
//! transaction, so under load one fsync covers many requests, while an idle
//! gateway still commits a lone record immediately. The order of commits is
//! the order of the log.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AuditError;
use crate::domain::AuditRecord;
use crate::store::{Store, TileBuilder};

struct Pending {
    records: Vec<AuditRecord>,
    deadline: Option<Instant>,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// Handle to the writer task; cheap to clone. When every handle is dropped
/// the task commits what is queued and ends (see [`AuditWriter::spawn`]).
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
}

impl AuditWriter {
    /// Starts the writer. `max_batch` caps the records per transaction;
    /// `queue` caps the submissions waiting (back-pressure, not unbounded
    /// memory, when the store is slow).
    pub fn spawn(store: Store, max_batch: usize, queue: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let handle = tokio::spawn(run(store, rx, max_batch));
        (Self { tx }, handle)
    }

    /// Appends records and returns once they are durable. Records still
    /// queued when `deadline` passes are dropped, not written.
    pub async fn append(
        &self,
        records: Vec<AuditRecord>,
        deadline: Option<Instant>,
    ) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                records,
                deadline,
                done,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(max_batch);
    let mut waiters: Vec<oneshot::Sender<Result<(), AuditError>>> = Vec::new();
    // Tiles are stored as the batches complete them.
    let mut tiles = TileBuilder::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let now = Instant::now();
        while let Some(p) = next.take() {
            if p.deadline.is_some_and(|d| d <= now) || p.done.is_closed() {
                // Nobody will receive this answer: do not record it as given.
                let _ = p.done.send(Err(AuditError::DeadlineExceeded));
            } else {
                waiters.push(p.done);
                batch.extend(p.records);
                if batch.len() >= max_batch {
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let result = match store.append_audit(&batch, None, Some(&mut tiles)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), "audit batch write failed");
                Err(AuditError::WriteFailed)
            }
        };
        tracing::trace!(
            records = batch.len(),
            submissions = waiters.len(),
            "audit batch committed"
        );
        for done in waiters.drain(..) {
            // A caller that gave up (deadline, disconnect) no longer listens;
            // its record is durable all the same.
            let _ = done.send(result.clone());
        }
        batch.clear();
    }
    tracing::debug!("audit writer drained and stopped");
}
