//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed audit batch survives power loss.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};

use super::{
    AuditQueryLog, Hash, ImportStats, IndexedAuditRecord, JournalMark, RawAuditRow, RawMirrorRow,
    SQLITE_CHUNK, StoreError, StoredCheckpoint, TileBuilder, hash32, pack_tokens,
    push_audit_filter,
};
use crate::domain::{AuditFilter, AuditRecord, AuditStatsRow, LookupKey, MirrorRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The audit log's subscriber indexes hold 8-byte key prefixes (migration 0006).
const AUDIT_KEY_PREFIX: bool = true;

const MIRROR_COLUMNS: &str = "lookup_key, key_id, name_hash, folded_hash, token_hashes, dob_hash, \
     dob_precision, sex_hash, status, source_version";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// One transaction of upserts spanning many chunks. Dropped unfinished, it
/// rolls back.
pub struct SqliteBulk {
    tx: Transaction<'static, Sqlite>,
    changed: u64,
}

impl SqliteBulk {
    pub async fn send(
        &mut self,
        rows: &[&(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<(), StoreError> {
        self.changed += upsert_in(&mut self.tx, rows, now_us).await?;
        Ok(())
    }

    /// Commits; the rows that changed. Never `None`: SQLite's bulk path is
    /// its upsert, which takes existing keys.
    pub async fn finish(self) -> Result<Option<u64>, StoreError> {
        self.tx.commit().await?;
        Ok(Some(self.changed))
    }
}

/// Inserts or updates `rows`, leaving rows equal to what is stored alone;
/// returns how many changed.
async fn upsert_in(
    conn: &mut SqliteConnection,
    rows: &[&(LookupKey, MirrorRecord)],
    now_us: i64,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    for chunk in rows.chunks(SQLITE_CHUNK / 2) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO mirror_records (lookup_key, key_id, name_hash, folded_hash, \
             token_hashes, dob_hash, dob_precision, sex_hash, status, source_version, updated_at) ",
        );
        qb.push_values(chunk, |mut b, (k, r)| {
            b.push_bind(k.0.to_vec())
                .push_bind(i64::from(r.key_id))
                .push_bind(r.name.0.to_vec())
                .push_bind(r.folded.0.to_vec())
                .push_bind(pack_tokens(r))
                .push_bind(r.dob.0.to_vec())
                .push_bind(i64::from(r.dob_precision.as_i16()))
                .push_bind(r.sex.0.to_vec())
                .push_bind(i64::from(r.status.as_i16()))
                .push_bind(r.source_version)
                .push_bind(now_us);
        });
        qb.push(super::mirror_upsert_on_conflict!());
        changed += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(changed)
}

fn mirror_row(r: &SqliteRow) -> Result<RawMirrorRow, sqlx::Error> {
    Ok(RawMirrorRow {
        lookup_key: r.try_get(0)?,
        key_id: r.try_get(1)?,
        name_hash: r.try_get(2)?,
        folded_hash: r.try_get(3)?,
        token_hashes: r.try_get(4)?,
        dob_hash: r.try_get(5)?,
        dob_precision: r.try_get(6)?,
        sex_hash: r.try_get(7)?,
        status: r.try_get(8)?,
        source_version: r.try_get(9)?,
    })
}

fn indexed_row(r: &SqliteRow) -> Result<IndexedAuditRecord, StoreError> {
    let index: i64 = r.try_get("leaf_index")?;
    let hash: Option<Vec<u8>> = r.try_get("leaf_hash")?;
    Ok(IndexedAuditRecord {
        index: index as u64,
        leaf_hash: hash.map(|h| hash32(&h, "leaf_hash")).transpose()?,
        record: audit_row(r)?.into_record()?,
    })
}

fn audit_row(r: &SqliteRow) -> Result<RawAuditRow, sqlx::Error> {
    Ok(RawAuditRow {
        audit_id: r.try_get("audit_id")?,
        recorded_at: r.try_get("recorded_at")?,
        caller: r.try_get("caller")?,
        request_id: r.try_get("request_id")?,
        job_id: r.try_get("job_id")?,
        purpose: r.try_get("purpose")?,
        consent_ref: r.try_get("consent_ref")?,
        lookup_key: r.try_get("lookup_key")?,
        msisdn_hash: r.try_get("msisdn_hash")?,
        key_id: r.try_get("key_id")?,
        decision: r.try_get("decision")?,
        id_result: r.try_get("id_result")?,
        name_result: r.try_get("name_result")?,
        dob_result: r.try_get("dob_result")?,
        sex_result: r.try_get("sex_result")?,
        name_tier: r.try_get("name_tier")?,
        name_score: r.try_get("name_score")?,
        action: r.try_get("action")?,
        reasons: r.try_get("reasons")?,
        mirror_version: r.try_get("mirror_version")?,
        latency_us: r.try_get("latency_us")?,
    })
}

impl SqliteStore {
    super::shared::shared_methods!(Sqlite, i64);

    pub async fn connect(path: &str) -> Result<Self, StoreError> {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(e.into()))?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it returns. Group commit in the
            // audit writer keeps the fsync count low.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(opts)
            .await?;
        Self::migrate(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn key_fingerprint(&self, key_id: u16, fp: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT INTO key_fingerprints (key_id, fingerprint) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(i64::from(key_id))
            .bind(&fp[..])
            .execute(&self.pool)
            .await?;
        let fp: Vec<u8> =
            sqlx::query_scalar("SELECT fingerprint FROM key_fingerprints WHERE key_id = ?")
                .bind(i64::from(key_id))
                .fetch_one(&self.pool)
                .await?;
        Ok(fp)
    }

    pub async fn get_records(
        &self,
        keys: &[LookupKey],
    ) -> Result<Vec<(LookupKey, MirrorRecord)>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SQLITE_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
            qb.push(MIRROR_COLUMNS);
            qb.push(" FROM mirror_records WHERE lookup_key IN (");
            let mut sep = qb.separated(", ");
            for k in chunk {
                sep.push_bind(k.0.to_vec());
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(mirror_row(r)?.into_record()?);
            }
        }
        Ok(out)
    }

    pub async fn begin_import(&self, source: &str) -> Result<i64, StoreError> {
        let now = crate::clock::now_micros();
        let v: i64 = sqlx::query_scalar(
            "INSERT INTO mirror_imports (version, started_at, source) \
             SELECT COALESCE(MAX(version), 0) + 1, ?, ? FROM mirror_imports RETURNING version",
        )
        .bind(now)
        .bind(source)
        .fetch_one(&self.pool)
        .await?;
        Ok(v)
    }

    pub async fn upsert_records(
        &self,
        rows: &[&(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = upsert_in(&mut tx, rows, now_us).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Opens the transaction a first import streams its chunks into (see
    /// [`super::BulkInsert`]).
    pub async fn begin_bulk(&self) -> Result<SqliteBulk, StoreError> {
        Ok(SqliteBulk {
            tx: self.pool.begin().await?,
            changed: 0,
        })
    }

    pub async fn delete_records(
        &self,
        keys: &[LookupKey],
        version: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for k in keys {
            let n = sqlx::query("DELETE FROM mirror_records WHERE lookup_key = ?")
                .bind(&k.0[..])
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query("INSERT INTO mirror_deletions (lookup_key, version) VALUES (?, ?)")
                    .bind(&k.0[..])
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            deleted += n;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    pub async fn append_audit(
        &self,
        records: &[AuditRecord],
        journal: Option<JournalMark<'_>>,
        tiles: Option<&mut TileBuilder>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Taking the next positions and inserting the records is one
        // transaction: the log stays dense whatever fails.
        let n = records.len() as i64;
        let end: i64 =
            sqlx::query_scalar("UPDATE audit_head SET size = size + ? WHERE id = 1 RETURNING size")
                .bind(n)
                .fetch_one(&mut *tx)
                .await?;
        let start = (end - n) as u64;
        let hashes = super::leaf_hashes(start, records);
        let mut next = start;
        for chunk in records.chunks(SQLITE_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO audit_log (audit_id, recorded_at, caller, request_id, job_id, purpose, \
                 consent_ref, lookup_key, msisdn_hash, key_id, decision, id_result, name_result, \
                 dob_result, sex_result, name_tier, name_score, action, reasons, mirror_version, \
                 latency_us, leaf_index, leaf_hash) ",
            );
            qb.push_values(chunk, |mut b, a| {
                let v = &a.verdict;
                let index = next;
                next += 1;
                b.push_bind(a.audit_id.clone())
                    .push_bind(a.recorded_at)
                    .push_bind(a.caller.to_string())
                    .push_bind(a.request_id.clone())
                    .push_bind(a.job_id.as_deref().map(str::to_owned))
                    .push_bind(i64::from(a.purpose.as_i16()))
                    .push_bind(a.consent_ref.clone())
                    .push_bind(a.lookup_key.map(|k| k.0.to_vec()))
                    .push_bind(a.msisdn_hash.map(|k| k.0.to_vec()))
                    .push_bind(i64::from(a.key_id))
                    .push_bind(i64::from(v.decision.as_i16()))
                    .push_bind(i64::from(v.id_number.as_i16()))
                    .push_bind(i64::from(v.full_name.as_i16()))
                    .push_bind(i64::from(v.date_of_birth.as_i16()))
                    .push_bind(i64::from(v.sex.as_i16()))
                    .push_bind(v.name_tier.map(|t| i64::from(t.as_i16())))
                    .push_bind(i64::from(v.name_score))
                    .push_bind(i64::from(v.action.as_i16()))
                    .push_bind(i64::from(v.reasons.bits()))
                    .push_bind(a.mirror_version)
                    .push_bind(i64::from(a.latency_us))
                    .push_bind(index as i64)
                    .push_bind(hashes[(index - start) as usize].to_vec());
            });
            qb.build().execute(&mut *tx).await?;
        }
        Self::finish_audit_append(tx, journal, tiles, start, &hashes).await
    }

    pub async fn prune_audit_before(
        &self,
        before: u64,
        _cutoff_us: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM audit_log WHERE leaf_index < ?")
            .bind(before as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE audit_head SET pruned_before = MAX(pruned_before, ?) WHERE id = 1")
            .bind(before as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MsisdnHash;

    /// The audit queries by subscriber must reach the prefix indexes of
    /// migration 0006; without them every such query scans the whole log.
    #[tokio::test]
    async fn subscriber_audit_queries_use_the_prefix_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(dir.path().join("s.db").to_str().unwrap())
            .await
            .unwrap();
        let by_id = AuditFilter {
            lookup_key: Some(LookupKey([7; 32])),
            ..AuditFilter::default()
        };
        let by_msisdn = AuditFilter {
            msisdn_hash: Some(MsisdnHash([9; 32])),
            ..AuditFilter::default()
        };
        for (filter, index) in [
            (by_id, "audit_log_lookup_prefix"),
            (by_msisdn, "audit_log_msisdn_prefix"),
        ] {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("EXPLAIN QUERY PLAN SELECT * FROM audit_log");
            push_audit_filter!(qb, &filter, AUDIT_KEY_PREFIX);
            // As `query_audit` pages through the log.
            qb.push(" ORDER BY seq LIMIT 100");
            let plan: Vec<String> = qb
                .build()
                .fetch_all(&store.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
            assert!(
                plan.iter().any(|d| d.contains(index)),
                "{index} not used: {plan:?}"
            );
        }
    }
}
