//! Persistence of the mirror and the audit log, on SQLite (embedded default)
//! or PostgreSQL (production), through sqlx.
//!
//! Dispatch is a two-variant enum rather than a trait object: both backends
//! are known at compile time, the hot path avoids boxed futures, and every
//! method is written once per backend in `sqlite.rs` / `postgres.rs`.
//! **Architecture invariant:** sqlx types never leave this module.

mod postgres;
mod shared;
mod sqlite;

use crate::domain::{AuditFilter, AuditRecord, AuditStatsRow, LookupKey, MirrorRecord};

pub use crate::domain::merkle::{Hash, TileBuilder};

/// An audit record with its log position and stored leaf hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedAuditRecord {
    pub index: u64,
    pub leaf_hash: Option<Hash>,
    pub record: AuditRecord,
}

/// How far an audit journal's indexing gets with one batch of records:
/// written in the same transaction as the records, so a restart resumes
/// exactly where indexing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalMark<'a> {
    pub journal_id: &'a str,
    /// Journal records indexed before this batch.
    pub from: u64,
    /// Journal records indexed with it.
    pub to: u64,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    pub signed_at: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// (size, root, signed_at, key_id, signature) as selected.
type CheckpointRow = (i64, Vec<u8>, i64, String, Vec<u8>);

/// The leaf hashes of `records` at positions `start..`.
fn leaf_hashes(start: u64, records: &[AuditRecord]) -> Vec<Hash> {
    records
        .iter()
        .enumerate()
        .map(|(i, a)| crate::domain::merkle::leaf_hash(start + i as u64, a))
        .collect()
}

fn hash32(b: &[u8], what: &'static str) -> Result<Hash, StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt(what))
}

/// One audit query, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQueryLog {
    pub asked_at: i64,
    pub caller: String,
    pub role: String,
    pub method: String,
    /// JSON of the filters, identifiers already hashed.
    pub filters: String,
    pub returned: u64,
}

/// The mirror upsert's conflict clause, the same SQL on both backends: an
/// existing record takes the new values, but a row equal to what is stored
/// is left alone, so that it counts as unchanged (`rows_affected`) and keeps
/// its `updated_at`.
macro_rules! mirror_upsert_on_conflict {
    () => {
        " ON CONFLICT (lookup_key) DO UPDATE SET key_id = excluded.key_id, \
         name_hash = excluded.name_hash, folded_hash = excluded.folded_hash, \
         token_hashes = excluded.token_hashes, dob_hash = excluded.dob_hash, \
         dob_precision = excluded.dob_precision, sex_hash = excluded.sex_hash, \
         status = excluded.status, source_version = excluded.source_version, \
         updated_at = excluded.updated_at \
         WHERE (mirror_records.key_id, mirror_records.name_hash, mirror_records.folded_hash, \
         mirror_records.token_hashes, mirror_records.dob_hash, mirror_records.dob_precision, \
         mirror_records.sex_hash, mirror_records.status) IS DISTINCT FROM (excluded.key_id, \
         excluded.name_hash, excluded.folded_hash, excluded.token_hashes, excluded.dob_hash, \
         excluded.dob_precision, excluded.sex_hash, excluded.status)"
    };
}
pub(crate) use mirror_upsert_on_conflict;

/// Appends `WHERE …` for an audit filter; the same SQL serves both backends
/// (only placeholders differ, and `QueryBuilder` writes those). With
/// `$key_prefix`, subscriber keys are also matched on the 8-byte prefix that
/// SQLite's audit indexes hold (migration 0006), so those indexes are used.
macro_rules! push_audit_filter {
    ($qb:expr, $f:expr, $key_prefix:expr) => {{
        let f: &AuditFilter = $f;
        $qb.push(" WHERE 1 = 1");
        if let Some(v) = f.since {
            $qb.push(" AND recorded_at >= ").push_bind(v);
        }
        if let Some(v) = f.until {
            $qb.push(" AND recorded_at < ").push_bind(v);
        }
        if let Some(v) = &f.caller {
            $qb.push(" AND caller = ").push_bind(v.clone());
        }
        if let Some(v) = f.decision {
            $qb.push(" AND decision = ")
                .push_bind(i32::from(v.as_i16()));
        }
        if let Some(v) = f.purpose {
            $qb.push(" AND purpose = ").push_bind(i32::from(v.as_i16()));
        }
        if let Some(v) = &f.request_id {
            $qb.push(" AND request_id = ").push_bind(v.clone());
        }
        if let Some(v) = &f.job_id {
            $qb.push(" AND job_id = ").push_bind(v.clone());
        }
        if let Some(v) = f.lookup_key {
            $qb.push(" AND lookup_key = ").push_bind(v.0.to_vec());
            if $key_prefix {
                $qb.push(" AND substr(lookup_key, 1, 8) = ")
                    .push_bind(v.0[..8].to_vec());
            }
        }
        if let Some(v) = f.msisdn_hash {
            $qb.push(" AND msisdn_hash = ").push_bind(v.0.to_vec());
            if $key_prefix {
                $qb.push(" AND substr(msisdn_hash, 1, 8) = ")
                    .push_bind(v.0[..8].to_vec());
            }
        }
    }};
}
pub(crate) use push_audit_filter;

/// Most rows a single multi-row statement carries. SQLite allows 32,766
/// bound parameters per statement; the audit row has 22 columns.
const SQLITE_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (use sqlite://PATH or postgres://…)")]
    BadUrl,
    #[error(
        "the hash key does not match the key (id {key_id}) this mirror was built with; \
         start with the original key or rebuild the mirror"
    )]
    KeyMismatch { key_id: u16 },
    #[error("stored row is corrupt: {0}")]
    Corrupt(&'static str),
    #[error(
        "audit journal {journal_id} was not at record {expected} in the database: \
         another process is indexing it"
    )]
    JournalConflict { journal_id: String, expected: u64 },
}

/// Counts an import reports when it finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    pub upserted: u64,
    pub deleted: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Connects and applies pending migrations. `url` is `sqlite://PATH`,
    /// `postgres://…`, or a bare file path (SQLite, created if missing).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(postgres::PgStore::connect(url).await?))
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or(url.strip_prefix("sqlite:"))
        {
            Ok(Self::Sqlite(sqlite::SqliteStore::connect(path).await?))
        } else if !url.contains("://") && !url.is_empty() {
            Ok(Self::Sqlite(sqlite::SqliteStore::connect(url).await?))
        } else {
            Err(StoreError::BadUrl)
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// Records the key's fingerprint on first use; refuses a different key.
    pub async fn check_key(&self, key_id: u16, fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        let stored = dispatch!(self, s => s.key_fingerprint(key_id, fingerprint).await)?;
        if stored.as_slice() == fingerprint {
            Ok(())
        } else {
            Err(StoreError::KeyMismatch { key_id })
        }
    }

    /// The records for `keys` that exist, in no particular order.
    pub async fn get_records(
        &self,
        keys: &[LookupKey],
    ) -> Result<Vec<(LookupKey, MirrorRecord)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, s => s.get_records(keys).await)
    }

    pub async fn get_record(&self, key: &LookupKey) -> Result<Option<MirrorRecord>, StoreError> {
        dispatch!(self, s => s.get_record(key).await)
    }

    /// The newest finished import's version; 0 for an empty mirror.
    pub async fn mirror_version(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.mirror_version().await)
    }

    pub async fn record_count(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.record_count().await)
    }

    /// Allocates the next mirror version for an import of `source`.
    pub async fn begin_import(&self, source: &str) -> Result<i64, StoreError> {
        dispatch!(self, s => s.begin_import(source).await)
    }

    /// Inserts or updates records, in one transaction. Rows equal to what is
    /// stored are left alone (so they do not invalidate caches); returns how
    /// many rows changed. Within `rows`, the last entry for a key wins.
    pub async fn upsert_records(
        &self,
        rows: &[(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let rows = last_per_key(rows);
        dispatch!(self, s => s.upsert_records(&rows, now_us).await)
    }

    /// Opens the bulk path of an import (see [`BulkInsert`]).
    pub async fn begin_bulk_insert(&self) -> Result<BulkInsert, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => BulkInsert::Sqlite(s.begin_bulk().await?),
            Store::Postgres(s) => BulkInsert::Postgres(s.begin_bulk().await?),
        })
    }

    /// Deletes records and leaves tombstones for cache invalidation.
    pub async fn delete_records(
        &self,
        keys: &[LookupKey],
        version: i64,
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        dispatch!(self, s => s.delete_records(keys, version).await)
    }

    /// Marks the import finished: from now on it is the mirror version.
    pub async fn finish_import(
        &self,
        version: i64,
        stats: ImportStats,
        now_us: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.finish_import(version, stats, now_us).await)
    }

    /// Keys changed or deleted by imports after `version`, or `None` when
    /// there are more than `limit` (the caller then drops its whole cache).
    pub async fn changed_since(
        &self,
        version: i64,
        limit: usize,
    ) -> Result<Option<Vec<LookupKey>>, StoreError> {
        dispatch!(self, s => s.changed_since(version, limit).await)
    }

    /// Appends audit records in one transaction: all or none are durable.
    /// With a journal mark, the journal's progress moves in the same
    /// transaction (and the append fails if it was not at `mark.from`).
    /// With a tile builder, the tiles the records complete are stored in
    /// that transaction too, and the builder moves on once it commits.
    pub async fn append_audit(
        &self,
        records: &[AuditRecord],
        journal: Option<JournalMark<'_>>,
        tiles: Option<&mut TileBuilder>,
    ) -> Result<(), StoreError> {
        if records.is_empty() && journal.is_none() {
            return Ok(());
        }
        dispatch!(self, s => s.append_audit(records, journal, tiles).await)
    }

    /// Identifies this database's audit log (random, made by a migration).
    pub async fn audit_log_id(&self) -> Result<String, StoreError> {
        dispatch!(self, s => s.audit_log_id().await)
    }

    /// Records of the journal `journal_id` indexed so far (`None`: none ever).
    pub async fn audit_journal_progress(
        &self,
        journal_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.audit_journal_progress(journal_id).await)
    }

    pub async fn audit_by_id(&self, audit_id: &str) -> Result<Option<AuditRecord>, StoreError> {
        dispatch!(self, s => s.audit_by_id(audit_id).await)
    }

    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.audit_count().await)
    }

    /// Records matching `filter` with a sequence number after `after`, in
    /// log order, at most `limit`. Returns each with its sequence number
    /// (the paging cursor).
    pub async fn query_audit(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        dispatch!(self, s => s.query_audit(filter, after, limit).await)
    }

    /// Counts per caller, Vietnam day, decision and purpose.
    pub async fn audit_stats(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditStatsRow>, StoreError> {
        dispatch!(self, s => s.audit_stats(filter).await)
    }

    /// Records that an audit query was made.
    pub async fn record_audit_query(&self, q: &AuditQueryLog) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_audit_query(q).await)
    }

    /// Size of the audit log (leaves committed).
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => s.audit_size().await)
    }

    /// Stored leaf hashes for positions `lo..hi`, in order; `None` for a row
    /// whose hash is missing. Positions without a row are absent.
    pub async fn audit_leaf_hashes(
        &self,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, Option<Hash>)>, StoreError> {
        dispatch!(self, s => s.audit_leaf_hashes(lo, hi).await)
    }

    /// Records at positions `from..`, in order, with their stored leaf hash.
    pub async fn audit_records_from(
        &self,
        from: u64,
        limit: u32,
    ) -> Result<Vec<IndexedAuditRecord>, StoreError> {
        dispatch!(self, s => s.audit_records_from(from, limit).await)
    }

    /// The record with this id and its position.
    pub async fn audit_leaf_of(
        &self,
        audit_id: &str,
    ) -> Result<Option<IndexedAuditRecord>, StoreError> {
        dispatch!(self, s => s.audit_leaf_of(audit_id).await)
    }

    /// Stored tile hashes for tiles `from..below`, in order.
    pub async fn audit_tiles(&self, from: u64, below: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        dispatch!(self, s => s.audit_tiles(from, below).await)
    }

    pub async fn put_audit_tiles(&self, tiles: &[(u64, Hash)]) -> Result<(), StoreError> {
        if tiles.is_empty() {
            return Ok(());
        }
        dispatch!(self, s => s.put_audit_tiles(tiles).await)
    }

    /// Signed checkpoints, smallest first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        dispatch!(self, s => s.audit_checkpoints().await)
    }

    /// The checkpoint of `size` leaves, or the newest one for `None`.
    pub async fn audit_checkpoint(
        &self,
        size: Option<u64>,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        dispatch!(self, s => s.audit_checkpoint(size).await)
    }

    pub async fn put_audit_checkpoint(&self, c: &StoredCheckpoint) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_audit_checkpoint(c).await)
    }

    /// Position of the first record retention kept (0 if nothing was pruned).
    pub async fn audit_pruned_before(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => s.audit_pruned_before().await)
    }

    /// Kept leaf hashes of pruned records in `lo..hi`.
    pub async fn audit_pruned_leaves(
        &self,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, Hash)>, StoreError> {
        dispatch!(self, s => s.audit_pruned_leaves(lo, hi).await)
    }

    pub async fn put_audit_pruned_leaves(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
        if leaves.is_empty() {
            return Ok(());
        }
        dispatch!(self, s => s.put_audit_pruned_leaves(leaves).await)
    }

    /// The first position whose record is at or after `cutoff_us`.
    pub async fn audit_first_index_since(&self, cutoff_us: i64) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.audit_first_index_since(cutoff_us).await)
    }

    /// Removes every record before position `before` (dropping whole
    /// monthly partitions on PostgreSQL where it can) and records the new
    /// start. Returns how many records went.
    pub async fn prune_audit_before(&self, before: u64, cutoff_us: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.prune_audit_before(before, cutoff_us).await)
    }

    /// Creates the monthly audit partitions around `now_us` (PostgreSQL;
    /// nothing to do on SQLite).
    pub async fn ensure_audit_partitions(&self, now_us: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.ensure_audit_partitions(now_us).await,
        }
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}

/// An import's bulk path: many chunks in one statement or transaction, so
/// that the database does not wait for a commit (and, on PostgreSQL, for the
/// next statement) between chunks.
///
/// - PostgreSQL: one binary `COPY`, about twice as fast as the upsert, for
///   records of which none exists yet. All or nothing: if a key already
///   existed, [`BulkInsert::finish`] writes none of the rows sent.
/// - SQLite: one transaction of the same upserts as
///   [`Store::upsert_records`]; it takes existing keys. While it is open,
///   other writers to the file (a gateway's audit indexer) wait for it.
pub enum BulkInsert {
    Sqlite(sqlite::SqliteBulk),
    Postgres(postgres::PgBulk),
}

impl BulkInsert {
    /// Streams rows in. Within `rows`, the last entry for a key wins; on
    /// PostgreSQL a key sent twice across calls fails the whole insert at
    /// `finish`.
    pub async fn send(
        &mut self,
        rows: &[(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(rows);
        match self {
            BulkInsert::Sqlite(b) => b.send(&rows, now_us).await,
            BulkInsert::Postgres(b) => b.send(&rows, now_us).await,
        }
    }

    /// Whether `finish` may refuse the rows sent, so that the caller must
    /// keep them to redo through [`Store::upsert_records`].
    pub fn may_refuse(&self) -> bool {
        matches!(self, BulkInsert::Postgres(_))
    }

    /// Commits what was sent and returns the rows that changed, or
    /// `Ok(None)` if a key already existed where the bulk path cannot take
    /// one (PostgreSQL): then nothing was written, and the rows must go
    /// through [`Store::upsert_records`] instead.
    pub async fn finish(self) -> Result<Option<u64>, StoreError> {
        match self {
            BulkInsert::Sqlite(b) => b.finish().await,
            BulkInsert::Postgres(b) => b.finish().await,
        }
    }
}

/// Keeps the last row for each key: a key may appear twice in one extract,
/// and PostgreSQL refuses to upsert the same row twice in one statement.
fn last_per_key(rows: &[(LookupKey, MirrorRecord)]) -> Vec<&(LookupKey, MirrorRecord)> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by(|&a, &b| rows[a].0.cmp(&rows[b].0).then(b.cmp(&a)));
    idx.dedup_by(|a, b| rows[*a].0 == rows[*b].0);
    idx.into_iter().map(|i| &rows[i]).collect()
}

/// Concatenated 16-byte token hashes, as stored.
fn pack_tokens(r: &MirrorRecord) -> Vec<u8> {
    r.tokens.iter().flat_map(|t| t.0).collect()
}

fn unpack_tokens(b: &[u8]) -> Result<Vec<crate::domain::FieldHash>, StoreError> {
    if !b.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt("token_hashes length"));
    }
    Ok(b.chunks_exact(16)
        .map(|c| crate::domain::FieldHash::from_slice(c).expect("16 bytes"))
        .collect())
}

/// Columns of a mirror row, decoded backend-independently.
struct RawMirrorRow {
    lookup_key: Vec<u8>,
    key_id: i64,
    name_hash: Vec<u8>,
    folded_hash: Vec<u8>,
    token_hashes: Vec<u8>,
    dob_hash: Vec<u8>,
    dob_precision: i64,
    sex_hash: Vec<u8>,
    status: i64,
    source_version: i64,
}

impl RawMirrorRow {
    fn into_record(self) -> Result<(LookupKey, MirrorRecord), StoreError> {
        use crate::domain::{DobPrecision, FieldHash, RecordStatus};
        let fh = |b: &[u8], what| FieldHash::from_slice(b).ok_or(StoreError::Corrupt(what));
        let key =
            LookupKey::from_slice(&self.lookup_key).ok_or(StoreError::Corrupt("lookup_key"))?;
        let rec = MirrorRecord {
            name: fh(&self.name_hash, "name_hash")?,
            folded: fh(&self.folded_hash, "folded_hash")?,
            tokens: unpack_tokens(&self.token_hashes)?,
            dob: fh(&self.dob_hash, "dob_hash")?,
            dob_precision: i16::try_from(self.dob_precision)
                .ok()
                .and_then(DobPrecision::from_i16)
                .ok_or(StoreError::Corrupt("dob_precision"))?,
            sex: fh(&self.sex_hash, "sex_hash")?,
            status: i16::try_from(self.status)
                .ok()
                .and_then(RecordStatus::from_i16)
                .ok_or(StoreError::Corrupt("status"))?,
            key_id: u16::try_from(self.key_id).map_err(|_| StoreError::Corrupt("key_id"))?,
            source_version: self.source_version,
        };
        Ok((key, rec))
    }
}

/// Columns of an audit row, decoded backend-independently.
struct RawAuditRow {
    audit_id: String,
    recorded_at: i64,
    caller: String,
    request_id: String,
    job_id: Option<String>,
    purpose: i64,
    consent_ref: Option<String>,
    lookup_key: Option<Vec<u8>>,
    msisdn_hash: Option<Vec<u8>>,
    key_id: i64,
    decision: i64,
    id_result: i64,
    name_result: i64,
    dob_result: i64,
    sex_result: i64,
    name_tier: Option<i64>,
    name_score: i64,
    action: i64,
    reasons: i64,
    mirror_version: i64,
    latency_us: i64,
}

impl RawAuditRow {
    fn into_record(self) -> Result<AuditRecord, StoreError> {
        use crate::domain::{
            Decision, FieldResult, MsisdnHash, NameTier, Purpose, Reasons, RecommendedAction,
            Verdict,
        };
        let small = |v: i64, what| i16::try_from(v).map_err(|_| StoreError::Corrupt(what));
        let field = |v: i64, what| {
            small(v, what).and_then(|v| FieldResult::from_i16(v).ok_or(StoreError::Corrupt(what)))
        };
        let verdict = Verdict {
            decision: Decision::from_i16(small(self.decision, "decision")?)
                .ok_or(StoreError::Corrupt("decision"))?,
            id_number: field(self.id_result, "id_result")?,
            full_name: field(self.name_result, "name_result")?,
            date_of_birth: field(self.dob_result, "dob_result")?,
            sex: field(self.sex_result, "sex_result")?,
            name_tier: match self.name_tier {
                None => None,
                Some(t) => Some(
                    NameTier::from_i16(small(t, "name_tier")?)
                        .ok_or(StoreError::Corrupt("name_tier"))?,
                ),
            },
            name_score: u8::try_from(self.name_score)
                .map_err(|_| StoreError::Corrupt("name_score"))?,
            action: RecommendedAction::from_i16(small(self.action, "action")?)
                .ok_or(StoreError::Corrupt("action"))?,
            reasons: Reasons::from_bits(
                u32::try_from(self.reasons).map_err(|_| StoreError::Corrupt("reasons"))?,
            ),
        };
        Ok(AuditRecord {
            audit_id: self.audit_id,
            recorded_at: self.recorded_at,
            caller: self.caller.into(),
            request_id: self.request_id,
            job_id: self.job_id.map(Into::into),
            purpose: Purpose::from_i16(small(self.purpose, "purpose")?)
                .ok_or(StoreError::Corrupt("purpose"))?,
            consent_ref: self.consent_ref,
            lookup_key: match self.lookup_key {
                None => None,
                Some(b) => {
                    Some(LookupKey::from_slice(&b).ok_or(StoreError::Corrupt("lookup_key"))?)
                }
            },
            msisdn_hash: match self.msisdn_hash {
                None => None,
                Some(b) => Some(MsisdnHash(
                    b.as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("msisdn_hash"))?,
                )),
            },
            key_id: u16::try_from(self.key_id).map_err(|_| StoreError::Corrupt("key_id"))?,
            verdict,
            mirror_version: self.mirror_version,
            latency_us: u32::try_from(self.latency_us)
                .map_err(|_| StoreError::Corrupt("latency_us"))?,
        })
    }
}
