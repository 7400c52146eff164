//! Methods whose SQL is the same on both backends, written once.
//!
//! Placeholders are `$N`, which PostgreSQL takes natively and sqlx's SQLite
//! driver binds by number too. Each backend supplies `self.pool` and the row
//! decoders `mirror_row`, `audit_row` and `indexed_row`, its `MIGRATOR`, and
//! the constant `AUDIT_KEY_PREFIX` (whether its audit indexes hold subscriber-key prefixes;
//! see `push_audit_filter`); `$small` is how its SMALLINT columns decode
//! (`i64` on SQLite, `i16` on PostgreSQL).

/// A stored small integer as the `i16` the domain codes use.
pub(super) fn small(v: impl TryInto<i16>) -> Option<i16> {
    v.try_into().ok()
}

macro_rules! shared_methods {
    ($db:ty, $small:ty) => {
        /// Applies pending migrations, saying so first when the database
        /// already holds a schema: rebuilding an index on a large audit log
        /// takes minutes, and a silent start would look like a hang.
        async fn migrate(pool: &sqlx::Pool<$db>) -> Result<(), StoreError> {
            // Missing on a new database: nothing to announce then.
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
            let pending = MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count();
            if pending > 0 && !applied.is_empty() {
                tracing::info!(
                    pending,
                    "applying database migrations; on a large audit log this can take minutes"
                );
            }
            MIGRATOR.run(pool).await?;
            Ok(())
        }

        pub async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        }

        pub async fn close(&self) {
            self.pool.close().await;
        }

        pub async fn get_record(&self, key: &LookupKey) -> Result<Option<MirrorRecord>, StoreError> {
            let row = sqlx::query(
                "SELECT lookup_key, key_id, name_hash, folded_hash, token_hashes, dob_hash, \
                 dob_precision, sex_hash, status, source_version FROM mirror_records WHERE lookup_key = $1",
            )
            .bind(&key.0[..])
            .fetch_optional(&self.pool)
            .await?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(mirror_row(&r)?.into_record()?.1)),
            }
        }

        pub async fn mirror_version(&self) -> Result<i64, StoreError> {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM mirror_imports WHERE finished_at IS NOT NULL")
                    .fetch_one(&self.pool)
                    .await?;
            Ok(v.unwrap_or(0))
        }

        pub async fn record_count(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM mirror_records").fetch_one(&self.pool).await?)
        }

        pub async fn finish_import(&self, version: i64, s: ImportStats, now_us: i64) -> Result<(), StoreError> {
            sqlx::query(
                "UPDATE mirror_imports SET finished_at = $1, rows_upserted = $2, rows_deleted = $3, \
                 rows_rejected = $4 WHERE version = $5",
            )
            .bind(now_us)
            .bind(s.upserted as i64)
            .bind(s.deleted as i64)
            .bind(s.rejected as i64)
            .bind(version)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub async fn changed_since(&self, version: i64, limit: usize) -> Result<Option<Vec<LookupKey>>, StoreError> {
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT lookup_key FROM mirror_records WHERE source_version > $1 \
                 UNION ALL SELECT lookup_key FROM mirror_deletions WHERE version > $1 LIMIT $2",
            )
            .bind(version)
            .bind(limit as i64 + 1)
            .fetch_all(&self.pool)
            .await?;
            if rows.len() > limit {
                return Ok(None);
            }
            rows.iter()
                .map(|b| LookupKey::from_slice(b).ok_or(StoreError::Corrupt("lookup_key")))
                .collect::<Result<_, _>>()
                .map(Some)
        }

        pub async fn audit_by_id(&self, audit_id: &str) -> Result<Option<AuditRecord>, StoreError> {
            let row = sqlx::query("SELECT * FROM audit_log WHERE audit_id = $1")
                .bind(audit_id)
                .fetch_optional(&self.pool)
                .await?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(audit_row(&r)?.into_record()?)),
            }
        }

        pub async fn audit_count(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_log").fetch_one(&self.pool).await?)
        }

        pub async fn query_audit(
            &self,
            filter: &AuditFilter,
            after: Option<i64>,
            limit: u32,
        ) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT * FROM audit_log");
            push_audit_filter!(qb, filter, AUDIT_KEY_PREFIX);
            if let Some(a) = after {
                qb.push(" AND seq > ").push_bind(a);
            }
            qb.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
            let rows = qb.build().fetch_all(&self.pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<i64, _>("seq")?, audit_row(r)?.into_record()?)))
                .collect()
        }

        pub async fn audit_stats(&self, filter: &AuditFilter) -> Result<Vec<AuditStatsRow>, StoreError> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT caller, (recorded_at / 1000000 + ");
            qb.push_bind(crate::clock::VN_OFFSET_SECS);
            qb.push(") / 86400 AS day, decision, purpose, COUNT(*) AS n FROM audit_log");
            push_audit_filter!(qb, filter, AUDIT_KEY_PREFIX);
            qb.push(" GROUP BY caller, day, decision, purpose ORDER BY day, caller, decision, purpose");
            let rows = qb.build().fetch_all(&self.pool).await?;
            rows.iter()
                .map(|r| {
                    let decision = super::shared::small(r.try_get::<$small, _>("decision")?)
                        .and_then(crate::domain::Decision::from_i16)
                        .ok_or(StoreError::Corrupt("decision"))?;
                    let purpose = super::shared::small(r.try_get::<$small, _>("purpose")?)
                        .and_then(crate::domain::Purpose::from_i16)
                        .ok_or(StoreError::Corrupt("purpose"))?;
                    Ok(AuditStatsRow {
                        caller: r.try_get("caller")?,
                        day: r.try_get("day")?,
                        decision,
                        purpose,
                        count: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                    })
                })
                .collect()
        }

        pub async fn record_audit_query(&self, q: &AuditQueryLog) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO audit_queries (asked_at, caller, role, method, filters, returned) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(q.asked_at)
            .bind(&q.caller)
            .bind(&q.role)
            .bind(&q.method)
            .bind(&q.filters)
            .bind(q.returned as i64)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub async fn audit_size(&self) -> Result<u64, StoreError> {
            let n: i64 =
                sqlx::query_scalar("SELECT size FROM audit_head WHERE id = 1").fetch_one(&self.pool).await?;
            Ok(n as u64)
        }

        pub async fn audit_leaf_hashes(&self, lo: u64, hi: u64) -> Result<Vec<(u64, Option<Hash>)>, StoreError> {
            let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT leaf_index, leaf_hash FROM audit_log \
                 WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
            )
            .bind(lo as i64)
            .bind(hi as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|(i, h)| Ok((i as u64, h.map(|h| hash32(&h, "leaf_hash")).transpose()?)))
                .collect()
        }

        pub async fn audit_records_from(&self, from: u64, limit: u32) -> Result<Vec<IndexedAuditRecord>, StoreError> {
            let rows = sqlx::query("SELECT * FROM audit_log WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2")
                .bind(from as i64)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(indexed_row).collect()
        }

        pub async fn audit_leaf_of(&self, audit_id: &str) -> Result<Option<IndexedAuditRecord>, StoreError> {
            let row = sqlx::query("SELECT * FROM audit_log WHERE audit_id = $1")
                .bind(audit_id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(indexed_row).transpose()
        }

        pub async fn audit_tiles(&self, from: u64, below: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
            let rows: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT tile, hash FROM audit_tiles WHERE tile >= $1 AND tile < $2 ORDER BY tile")
                    .bind(from.min(i64::MAX as u64) as i64)
                    .bind(below.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool)
                    .await?;
            rows.into_iter().map(|(t, h)| Ok((t as u64, hash32(&h, "tile")?))).collect()
        }

        pub async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
            let rows: Vec<super::CheckpointRow> = sqlx::query_as(
                "SELECT size, root, signed_at, key_id, signature FROM audit_checkpoints ORDER BY size",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|(size, root, signed_at, key_id, signature)| {
                    Ok(StoredCheckpoint {
                        size: size as u64,
                        root: hash32(&root, "root")?,
                        signed_at,
                        key_id,
                        signature,
                    })
                })
                .collect()
        }

        /// The checkpoint of `size` leaves, or the newest one for `None`.
        pub async fn audit_checkpoint(&self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, StoreError> {
            let row: Option<super::CheckpointRow> = sqlx::query_as(
                "SELECT size, root, signed_at, key_id, signature FROM audit_checkpoints \
                 WHERE $1 < 0 OR size = $1 ORDER BY size DESC LIMIT 1",
            )
            .bind(size.map_or(-1, |s| s as i64))
            .fetch_optional(&self.pool)
            .await?;
            row.map(|(size, root, signed_at, key_id, signature)| {
                Ok(StoredCheckpoint { size: size as u64, root: hash32(&root, "root")?, signed_at, key_id, signature })
            })
            .transpose()
        }

        pub async fn put_audit_checkpoint(&self, c: &StoredCheckpoint) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO audit_checkpoints (size, root, signed_at, key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (size) DO NOTHING",
            )
            .bind(c.size as i64)
            .bind(c.root.to_vec())
            .bind(c.signed_at)
            .bind(&c.key_id)
            .bind(&c.signature)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub async fn audit_pruned_before(&self) -> Result<u64, StoreError> {
            let n: i64 = sqlx::query_scalar("SELECT pruned_before FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
            Ok(n as u64)
        }

        pub async fn audit_pruned_leaves(&self, lo: u64, hi: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT leaf_index, leaf_hash FROM audit_pruned_leaves \
                 WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
            )
            .bind(lo as i64)
            .bind(hi as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(|(i, h)| Ok((i as u64, hash32(&h, "pruned leaf")?))).collect()
        }

        pub async fn put_audit_pruned_leaves(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            for (i, h) in leaves {
                sqlx::query(
                    "INSERT INTO audit_pruned_leaves (leaf_index, leaf_hash) VALUES ($1, $2) \
                     ON CONFLICT (leaf_index) DO NOTHING",
                )
                .bind(*i as i64)
                .bind(h.to_vec())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub async fn audit_log_id(&self) -> Result<String, StoreError> {
            let id: Option<String> = sqlx::query_scalar("SELECT log_id FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
            id.ok_or(StoreError::Corrupt("audit_head.log_id"))
        }

        pub async fn audit_journal_progress(&self, journal_id: &str) -> Result<Option<u64>, StoreError> {
            let n: Option<i64> =
                sqlx::query_scalar("SELECT indexed FROM audit_journals WHERE journal_id = $1")
                    .bind(journal_id)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(n.map(|n| n as u64))
        }

        /// Stores tile hashes inside `tx`; a tile already stored is kept
        /// (tiles are never rewritten).
        async fn insert_tiles(
            tx: &mut sqlx::Transaction<'_, $db>,
            tiles: &[(u64, Hash)],
        ) -> Result<(), StoreError> {
            // Two parameters a row: within both backends' limits.
            for chunk in tiles.chunks(super::SQLITE_CHUNK) {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new("INSERT INTO audit_tiles (tile, hash) ");
                qb.push_values(chunk, |mut b, (t, h)| {
                    b.push_bind(*t as i64).push_bind(h.to_vec());
                });
                qb.push(" ON CONFLICT (tile) DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            Ok(())
        }

        pub async fn put_audit_tiles(&self, tiles: &[(u64, Hash)]) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            Self::insert_tiles(&mut tx, tiles).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Ends an audit append whose records, at positions `start..` with
        /// leaf hashes `hashes`, are inserted in `tx`: moves the journal's
        /// progress, stores the tiles they complete, commits, and only then
        /// moves the tile builder on.
        async fn finish_audit_append(
            mut tx: sqlx::Transaction<'_, $db>,
            journal: Option<super::JournalMark<'_>>,
            tiles: Option<&mut TileBuilder>,
            start: u64,
            hashes: &[Hash],
        ) -> Result<(), StoreError> {
            if let Some(m) = journal {
                Self::mark_journal(&mut tx, m).await?;
            }
            let built = tiles.as_ref().map(|b| b.extend(start, hashes));
            if let Some((done, _)) = &built
                && !done.is_empty()
            {
                Self::insert_tiles(&mut tx, done).await?;
            }
            tx.commit().await?;
            if let (Some(b), Some((_, after))) = (tiles, built) {
                *b = after;
            }
            Ok(())
        }

        /// Moves a journal's progress from `m.from` to `m.to` inside `tx`.
        async fn mark_journal(
            tx: &mut sqlx::Transaction<'_, $db>,
            m: super::JournalMark<'_>,
        ) -> Result<(), StoreError> {
            let n = sqlx::query(
                "INSERT INTO audit_journals (journal_id, indexed, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (journal_id) DO UPDATE SET indexed = excluded.indexed, \
                 updated_at = excluded.updated_at WHERE audit_journals.indexed = $4",
            )
            .bind(m.journal_id)
            .bind(m.to as i64)
            .bind(crate::clock::now_micros())
            .bind(m.from as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Err(StoreError::JournalConflict {
                    journal_id: m.journal_id.to_owned(),
                    expected: m.from,
                });
            }
            Ok(())
        }

        pub async fn audit_first_index_since(&self, cutoff_us: i64) -> Result<Option<u64>, StoreError> {
            let n: Option<i64> = sqlx::query_scalar("SELECT MIN(leaf_index) FROM audit_log WHERE recorded_at >= $1")
                .bind(cutoff_us)
                .fetch_one(&self.pool)
                .await?;
            Ok(n.map(|n| n as u64))
        }
    };
}
pub(super) use shared_methods;
