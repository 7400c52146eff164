//! PostgreSQL, for production. Bulk paths use `UNNEST` over array binds: one
//! statement per batch, no per-row round trips.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgCopyIn, PgPool, PgPoolCopyExt, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::{
    AuditQueryLog, Hash, ImportStats, IndexedAuditRecord, JournalMark, RawAuditRow, RawMirrorRow,
    StoreError, StoredCheckpoint, TileBuilder, hash32, pack_tokens, push_audit_filter,
};
use crate::domain::{AuditFilter, AuditRecord, AuditStatsRow, LookupKey, MirrorRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The audit log's subscriber indexes hold whole keys (with `seq`, per
/// partition), so queries need no prefix predicate.
const AUDIT_KEY_PREFIX: bool = false;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// Audit records per `INSERT` statement. A transaction takes as many as
/// it is given; its statements stay well under a second.
const PG_AUDIT_CHUNK: usize = 5_000;

/// PostgreSQL's binary `COPY` header: the signature, then zero flags and a
/// zero-length header extension. Rows follow as a field count and each field
/// as length + big-endian value; a -1 field count ends the data.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// An open binary `COPY` into `mirror_records`. Dropped unfinished, sqlx
/// cancels it and nothing it carried is written.
pub struct PgBulk {
    copy: PgCopyIn<PoolConnection<Postgres>>,
    /// Reused for every chunk's encoding.
    buf: Vec<u8>,
}

impl PgBulk {
    pub async fn send(
        &mut self,
        rows: &[&(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<(), StoreError> {
        let buf = &mut self.buf;
        buf.clear();
        buf.reserve(rows.len() * 230);
        for (k, r) in rows.iter().map(|r| (&r.0, &r.1)) {
            buf.extend_from_slice(&11i16.to_be_bytes());
            let mut field = |b: &[u8]| {
                buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
                buf.extend_from_slice(b);
            };
            field(&k.0);
            field(&(r.key_id as i16).to_be_bytes());
            field(&r.name.0);
            field(&r.folded.0);
            field(&pack_tokens(r));
            field(&r.dob.0);
            field(&r.dob_precision.as_i16().to_be_bytes());
            field(&r.sex.0);
            field(&r.status.as_i16().to_be_bytes());
            field(&r.source_version.to_be_bytes());
            field(&now_us.to_be_bytes());
        }
        self.copy.send(&self.buf[..]).await?;
        Ok(())
    }

    /// Ends the data and commits it. `Ok(None)`: a key already existed (in
    /// the table or earlier in this `COPY`), and nothing was written.
    pub async fn finish(mut self) -> Result<Option<u64>, StoreError> {
        self.copy.send(&(-1i16).to_be_bytes()[..]).await?;
        match self.copy.finish().await {
            Ok(n) => Ok(Some(n)),
            // A COPY is one statement: on a duplicate key nothing was
            // written. Nor on a deadlock with another import's COPY, whose
            // rows come in their file's order, not sorted as in an upsert.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("23505" | "40P01")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn mirror_row(r: &PgRow) -> Result<RawMirrorRow, sqlx::Error> {
    Ok(RawMirrorRow {
        lookup_key: r.try_get(0)?,
        key_id: i64::from(r.try_get::<i16, _>(1)?),
        name_hash: r.try_get(2)?,
        folded_hash: r.try_get(3)?,
        token_hashes: r.try_get(4)?,
        dob_hash: r.try_get(5)?,
        dob_precision: i64::from(r.try_get::<i16, _>(6)?),
        sex_hash: r.try_get(7)?,
        status: i64::from(r.try_get::<i16, _>(8)?),
        source_version: r.try_get(9)?,
    })
}

fn indexed_row(r: &PgRow) -> Result<IndexedAuditRecord, StoreError> {
    let index: i64 = r.try_get("leaf_index")?;
    let hash: Option<Vec<u8>> = r.try_get("leaf_hash")?;
    Ok(IndexedAuditRecord {
        index: index as u64,
        leaf_hash: hash.map(|h| hash32(&h, "leaf_hash")).transpose()?,
        record: audit_row(r)?.into_record()?,
    })
}

fn audit_row(r: &PgRow) -> Result<RawAuditRow, sqlx::Error> {
    let small = |c: &str| r.try_get::<i16, _>(c).map(i64::from);
    Ok(RawAuditRow {
        audit_id: r.try_get("audit_id")?,
        recorded_at: r.try_get("recorded_at")?,
        caller: r.try_get("caller")?,
        request_id: r.try_get("request_id")?,
        job_id: r.try_get("job_id")?,
        purpose: small("purpose")?,
        consent_ref: r.try_get("consent_ref")?,
        lookup_key: r.try_get("lookup_key")?,
        msisdn_hash: r.try_get("msisdn_hash")?,
        key_id: small("key_id")?,
        decision: small("decision")?,
        id_result: small("id_result")?,
        name_result: small("name_result")?,
        dob_result: small("dob_result")?,
        sex_result: small("sex_result")?,
        name_tier: r.try_get::<Option<i16>, _>("name_tier")?.map(i64::from),
        name_score: small("name_score")?,
        action: small("action")?,
        reasons: i64::from(r.try_get::<i32, _>("reasons")?),
        mirror_version: r.try_get("mirror_version")?,
        latency_us: i64::from(r.try_get::<i32, _>("latency_us")?),
    })
}

fn key_bytes(keys: &[LookupKey]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.0.to_vec()).collect()
}

impl PgStore {
    super::shared::shared_methods!(Postgres, i16);

    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::migrate(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn key_fingerprint(&self, key_id: u16, fp: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let key_id = i16::try_from(key_id).map_err(|_| StoreError::Corrupt("key_id"))?;
        sqlx::query(
            "INSERT INTO key_fingerprints (key_id, fingerprint) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(key_id)
        .bind(&fp[..])
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT fingerprint FROM key_fingerprints WHERE key_id = $1")
                .bind(key_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn get_records(
        &self,
        keys: &[LookupKey],
    ) -> Result<Vec<(LookupKey, MirrorRecord)>, StoreError> {
        let rows = sqlx::query(
            "SELECT lookup_key, key_id, name_hash, folded_hash, token_hashes, dob_hash, \
             dob_precision, sex_hash, status, source_version FROM mirror_records \
             WHERE lookup_key = ANY($1)",
        )
        .bind(key_bytes(keys))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| mirror_row(r)?.into_record()).collect()
    }

    pub async fn begin_import(&self, source: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Serialise version allocation between concurrent importers.
        sqlx::query("LOCK TABLE mirror_imports IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let v: i64 = sqlx::query_scalar(
            "INSERT INTO mirror_imports (version, started_at, source) \
             SELECT COALESCE(MAX(version), 0) + 1, $1, $2 FROM mirror_imports RETURNING version",
        )
        .bind(crate::clock::now_micros())
        .bind(source)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(v)
    }

    pub async fn upsert_records(
        &self,
        rows: &[&(LookupKey, MirrorRecord)],
        now_us: i64,
    ) -> Result<u64, StoreError> {
        let n = rows.len();
        let (mut keys, mut key_ids, mut names, mut folded, mut tokens) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut dobs, mut precs, mut sexes, mut statuses, mut versions) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, r) in rows.iter().map(|r| (&r.0, &r.1)) {
            keys.push(k.0.to_vec());
            key_ids.push(r.key_id as i16);
            names.push(r.name.0.to_vec());
            folded.push(r.folded.0.to_vec());
            tokens.push(pack_tokens(r));
            dobs.push(r.dob.0.to_vec());
            precs.push(r.dob_precision.as_i16());
            sexes.push(r.sex.0.to_vec());
            statuses.push(r.status.as_i16());
            versions.push(r.source_version);
        }
        let res = sqlx::query(concat!(
            "INSERT INTO mirror_records (lookup_key, key_id, name_hash, folded_hash, token_hashes, \
             dob_hash, dob_precision, sex_hash, status, source_version, updated_at) \
             SELECT k, ki, n, f, t, d, p, s, st, v, $11 FROM UNNEST($1::bytea[], $2::int2[], \
             $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[], $7::int2[], $8::bytea[], \
             $9::int2[], $10::int8[]) AS u(k, ki, n, f, t, d, p, s, st, v)",
            super::mirror_upsert_on_conflict!()
        ))
        .bind(keys)
        .bind(key_ids)
        .bind(names)
        .bind(folded)
        .bind(tokens)
        .bind(dobs)
        .bind(precs)
        .bind(sexes)
        .bind(statuses)
        .bind(versions)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    /// Opens the `COPY` a first import streams its chunks into (see
    /// [`super::BulkInsert`]).
    pub async fn begin_bulk(&self) -> Result<PgBulk, StoreError> {
        let mut copy = self
            .pool
            .copy_in_raw(
                "COPY mirror_records (lookup_key, key_id, name_hash, folded_hash, token_hashes, \
                 dob_hash, dob_precision, sex_hash, status, source_version, updated_at) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(COPY_HEADER).await?;
        Ok(PgBulk {
            copy,
            buf: Vec::new(),
        })
    }

    pub async fn delete_records(
        &self,
        keys: &[LookupKey],
        version: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM mirror_records WHERE lookup_key = ANY($1) RETURNING lookup_key",
        )
        .bind(key_bytes(keys))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO mirror_deletions (lookup_key, version) SELECT k, $2 FROM UNNEST($1::bytea[]) AS u(k)")
            .bind(&deleted)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.len() as u64)
    }

    pub async fn append_audit(
        &self,
        records: &[AuditRecord],
        journal: Option<JournalMark<'_>>,
        tiles: Option<&mut TileBuilder>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The head row's lock serialises writers (several gateways share one
        // dense sequence), and positions commit with their records.
        let n = records.len() as i64;
        let end: i64 = sqlx::query_scalar(
            "UPDATE audit_head SET size = size + $1 WHERE id = 1 RETURNING size",
        )
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
        let start = (end - n) as u64;
        let hashes = super::leaf_hashes(start, records);
        // One statement per chunk, all in the one transaction: a catch-up
        // batch of 20,000 records as one statement took over a second on a
        // busy machine, which sqlx reports as a slow statement every time.
        for (c, chunk) in records.chunks(PG_AUDIT_CHUNK).enumerate() {
            let first = c * PG_AUDIT_CHUNK;
            self.insert_audit_chunk(&mut tx, chunk, start + first as u64, &hashes[first..])
                .await?;
        }
        Self::finish_audit_append(tx, journal, tiles, start, &hashes).await
    }

    /// Inserts `records` at positions `first..`, with their leaf hashes
    /// (`hashes` from the first record's on).
    async fn insert_audit_chunk(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        records: &[AuditRecord],
        first: u64,
        hashes: &[Hash],
    ) -> Result<(), StoreError> {
        macro_rules! col {
            ($f:expr) => {
                records.iter().map($f).collect::<Vec<_>>()
            };
        }
        let indexes: Vec<i64> = (0..records.len() as u64)
            .map(|i| (first + i) as i64)
            .collect();
        sqlx::query(
            "INSERT INTO audit_log (audit_id, recorded_at, caller, request_id, job_id, purpose, \
             consent_ref, lookup_key, msisdn_hash, key_id, decision, id_result, name_result, \
             dob_result, sex_result, name_tier, name_score, action, reasons, mirror_version, \
             latency_us, leaf_index, leaf_hash) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
             $6::int2[], $7::text[], $8::bytea[], $9::bytea[], $10::int2[], $11::int2[], \
             $12::int2[], $13::int2[], $14::int2[], $15::int2[], $16::int2[], $17::int2[], \
             $18::int2[], $19::int4[], $20::int8[], $21::int4[], $22::int8[], $23::bytea[])",
        )
        .bind(col!(|a| a.audit_id.clone()))
        .bind(col!(|a| a.recorded_at))
        .bind(col!(|a| a.caller.to_string()))
        .bind(col!(|a| a.request_id.clone()))
        .bind(col!(|a| a.job_id.as_deref().map(str::to_owned)))
        .bind(col!(|a| a.purpose.as_i16()))
        .bind(col!(|a| a.consent_ref.clone()))
        .bind(col!(|a| a.lookup_key.map(|k| k.0.to_vec())))
        .bind(col!(|a| a.msisdn_hash.map(|k| k.0.to_vec())))
        .bind(col!(|a| a.key_id as i16))
        .bind(col!(|a| a.verdict.decision.as_i16()))
        .bind(col!(|a| a.verdict.id_number.as_i16()))
        .bind(col!(|a| a.verdict.full_name.as_i16()))
        .bind(col!(|a| a.verdict.date_of_birth.as_i16()))
        .bind(col!(|a| a.verdict.sex.as_i16()))
        .bind(col!(|a| a.verdict.name_tier.map(|t| t.as_i16())))
        .bind(col!(|a| i16::from(a.verdict.name_score)))
        .bind(col!(|a| a.verdict.action.as_i16()))
        .bind(col!(|a| a.verdict.reasons.bits() as i32))
        .bind(col!(|a| a.mirror_version))
        .bind(col!(|a| a.latency_us.min(i32::MAX as u32) as i32))
        .bind(indexes)
        .bind(
            hashes[..records.len()]
                .iter()
                .map(|h| h.to_vec())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn prune_audit_before(&self, before: u64, cutoff_us: i64) -> Result<u64, StoreError> {
        let mut dropped = 0u64;
        // Whole months first: a partition that ends before the cutoff and
        // holds nothing at or after `before` goes in one statement.
        for (name, _start, end) in self.audit_partitions().await? {
            if end > cutoff_us {
                continue;
            }
            let sql = format!("SELECT COUNT(*), MAX(leaf_index) FROM {name}");
            let (count, max): (i64, Option<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await?;
            if max.is_none_or(|m| (m as u64) < before) {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                    .execute(&self.pool)
                    .await?;
                dropped += count as u64;
            }
        }
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM audit_log WHERE leaf_index < $1")
            .bind(before as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE audit_head SET pruned_before = GREATEST(pruned_before, $1) WHERE id = 1",
        )
        .bind(before as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(dropped + n)
    }

    /// Monthly partitions: (table name, start, end) in unix microseconds.
    pub async fn audit_partitions(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_log' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(names
            .into_iter()
            .filter_map(|n| {
                let (y, m) = n.strip_prefix("audit_log_y")?.split_once('m')?;
                let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
                let (start, end) = month_range(y, m);
                Some((n, start, end))
            })
            .collect())
    }

    pub async fn ensure_audit_partitions(&self, now_us: i64) -> Result<(), StoreError> {
        let today = crate::domain::CivilDate::from_unix_days(now_us.div_euclid(86_400_000_000));
        let existing: Vec<String> = self
            .audit_partitions()
            .await?
            .into_iter()
            .map(|p| p.0)
            .collect();
        for k in -1i32..=2 {
            let months = today.year * 12 + i32::from(today.month) - 1 + k;
            let (y, m) = (months.div_euclid(12), (months.rem_euclid(12) + 1) as u8);
            let name = format!("audit_log_y{y:04}m{m:02}");
            if existing.contains(&name) {
                continue;
            }
            let (start, end) = month_range(y, m);
            // Rows that landed in the default partition for this month move
            // into the new one, in one transaction.
            let mut tx = self.pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {name} (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH moved AS (DELETE FROM audit_log_default WHERE recorded_at >= {start} AND recorded_at < {end} RETURNING *) \
                 INSERT INTO {name} SELECT * FROM moved"
            )))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE audit_log ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end})"
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Unix microseconds of the first instant of month `m` of year `y` (UTC) and
/// of the next month.
fn month_range(y: i32, m: u8) -> (i64, i64) {
    let start = crate::domain::CivilDate {
        year: y,
        month: m,
        day: 1,
    }
    .to_unix_days();
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = crate::domain::CivilDate {
        year: ny,
        month: nm,
        day: 1,
    }
    .to_unix_days();
    (start * 86_400_000_000, end * 86_400_000_000)
}
