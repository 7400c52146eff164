//! The durable audit trail: every answered verification is recorded before
//! its answer leaves the gateway.
//!
//! Two ways to make a record durable, chosen by `audit.commit`:
//! - [`journal::Journal`] (the default): a local append-only journal with
//!   group fsync, indexed into the store in the background;
//! - [`writer::AuditWriter`]: group commit straight into the store, for
//!   hosts whose local disk does not outlive them.

pub mod journal;
pub mod log;
pub mod writer;

use std::time::{Duration, Instant};

pub use journal::{Journal, JournalConfig, JournalError};
pub use writer::AuditWriter;

use crate::domain::AuditRecord;
use crate::store::Store;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log could not be written")]
    WriteFailed,
    #[error("the audit writer has stopped")]
    Stopped,
    /// The caller's deadline passed while the records waited to be
    /// written; they were dropped, so nothing is recorded as answered.
    #[error("the deadline passed before the audit record was written")]
    DeadlineExceeded,
}

/// Where audit records are committed before an answer may leave.
#[derive(Debug, Clone)]
pub enum CommitMode {
    /// Group commit into the store itself.
    Database { max_batch: usize, queue: usize },
    /// A local journal, indexed into the store in the background.
    Journal(JournalConfig),
}

/// Appends audit records durably; cheap to clone.
#[derive(Clone)]
pub enum AuditSink {
    Database(AuditWriter),
    Journal(Journal),
}

impl AuditSink {
    /// Starts the sink's background work; await the handle on shutdown
    /// (after dropping every sink) to have everything written and indexed.
    pub async fn start(
        store: Store,
        mode: CommitMode,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), JournalError> {
        Ok(match mode {
            CommitMode::Database { max_batch, queue } => {
                let (w, task) = AuditWriter::spawn(store, max_batch, queue);
                (Self::Database(w), task)
            }
            CommitMode::Journal(cfg) => {
                let (j, tasks) = Journal::open(store, cfg).await?;
                (Self::Journal(j), tasks.indexer)
            }
        })
    }

    /// Returns once `records` are durable. Records still queued when
    /// `deadline` passes are dropped, not written.
    ///
    /// The records are borrowed: the journal encodes them where they are,
    /// and callers then move their strings into the answers.
    pub async fn append(
        &self,
        records: &[AuditRecord],
        deadline: Option<Instant>,
    ) -> Result<(), AuditError> {
        match self {
            Self::Database(w) => w.append(records.to_vec(), deadline).await,
            Self::Journal(j) => j.append(records, deadline).await,
        }
    }

    /// Waits (at most `limit`) until every record durable now can be read
    /// from the store; returns whether it caught up.
    pub async fn synced(&self, limit: Duration) -> bool {
        match self {
            Self::Database(_) => true,
            Self::Journal(j) => j.synced(limit).await,
        }
    }

    /// Records durable but not yet readable from the store.
    pub fn backlog(&self) -> u64 {
        match self {
            Self::Database(_) => 0,
            Self::Journal(j) => j.backlog(),
        }
    }
}
