//! The pure domain: parsing, normalisation, keyed hashing, matching and
//! decisions.
//!
//! **Architecture invariant:** nothing in here does I/O, reads the clock or
//! knows about tonic or sqlx. The current date is passed in as a [`CivilDate`]
//! so every rule is a deterministic function of its inputs.

pub mod audit;
pub mod citizen_id;
pub mod date;
pub mod hashing;
pub mod matching;
pub mod merkle;
pub mod msisdn;
pub mod name;
pub mod request;
pub mod verdict;

pub use audit::{AuditFilter, AuditRecord, AuditStatsRow};
pub use citizen_id::{CitizenId, CitizenIdError};
pub use date::{CivilDate, DateOfBirth, DobError, DobPrecision};
pub use hashing::{FieldHash, KeyedHasher, LookupKey, MsisdnHash, RecordHasher};
pub use matching::{MirrorRecord, Probe, RecordStatus, decide};
pub use msisdn::{Msisdn, MsisdnError};
pub use name::{FullName, NameError};
pub use request::{
    Field, Identity, IdentityError, ImportStatus, Purpose, RawRequest, Sex, VerifyInput, Violation,
};
pub use verdict::{Decision, FieldResult, NameTier, Reason, Reasons, RecommendedAction, Verdict};
