//! The durable audit trail: every answered verification is written before its
//! answer leaves the gateway. See [`writer::AuditWriter`] for group commit.

pub mod log;
pub mod writer;

pub use writer::{AuditError, AuditWriter};
