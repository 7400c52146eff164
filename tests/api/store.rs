//! Store conformance: the same behaviour from SQLite and PostgreSQL.

use simverify::domain::merkle::{self, TILE};
use simverify::domain::{
    AuditRecord, CivilDate, Decision, Identity, LookupKey, MirrorRecord, Purpose, Reason, Verdict,
};
use simverify::store::{Hash, ImportStats, JournalMark, Store, StoreError, TileBuilder};

use crate::both_backends;
use crate::helpers::{Backend, TestDb, test_hasher};

const TODAY: CivilDate = CivilDate {
    year: 2026,
    month: 11,
    day: 22,
};

fn person(id: &str, name: &str, version: i64) -> (LookupKey, MirrorRecord) {
    Identity::parse(id, name, "1990-05-17", "F", "", TODAY)
        .unwrap()
        .to_record(&test_hasher(), version)
}

async fn open(backend: Backend) -> (TestDb, Store) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    (db, store)
}

async fn upsert_is_idempotent_and_counts_changes(backend: Backend) {
    let (_db, store) = open(backend).await;
    let v = store.begin_import("a").await.unwrap();
    let a = person("001190012345", "Nguyễn Thị An", v);
    let b = person("001190012346", "Trần Thị Bình", v);
    assert_eq!(
        store
            .upsert_records(&[a.clone(), b.clone()], 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .upsert_records(&[a.clone(), b.clone()], 2)
            .await
            .unwrap(),
        0
    );
    let renamed = person("001190012345", "Nguyễn Thị Anh", v);
    // Duplicate keys in one batch: the last one wins.
    assert_eq!(
        store
            .upsert_records(&[a.clone(), renamed.clone()], 3)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get_record(&a.0).await.unwrap(), Some(renamed.1));
    assert_eq!(store.record_count().await.unwrap(), 2);
}

async fn get_records_returns_only_existing(backend: Backend) {
    let (_db, store) = open(backend).await;
    let rows: Vec<_> = (0..1500)
        .map(|i| person(&format!("001190{i:06}"), "Lê Văn Tư", 1))
        .collect();
    store.upsert_records(&rows, 1).await.unwrap();
    let mut keys: Vec<LookupKey> = rows.iter().step_by(2).map(|r| r.0).collect();
    keys.push(person("001190999999", "X", 1).0);
    let mut got = store.get_records(&keys).await.unwrap();
    assert_eq!(got.len(), 750);
    got.sort_by_key(|r| r.0);
    let mut want: Vec<_> = rows.iter().step_by(2).cloned().collect();
    want.sort_by_key(|r| r.0);
    assert_eq!(got, want);
    assert!(store.get_records(&[]).await.unwrap().is_empty());
}

async fn versions_and_changes(backend: Backend) {
    let (_db, store) = open(backend).await;
    assert_eq!(store.mirror_version().await.unwrap(), 0);
    let v1 = store.begin_import("one").await.unwrap();
    let a = person("001190012345", "Nguyễn Thị An", v1);
    let b = person("001190012346", "Trần Thị Bình", v1);
    store
        .upsert_records(&[a.clone(), b.clone()], 1)
        .await
        .unwrap();
    // Unfinished imports are not the mirror version yet.
    assert_eq!(store.mirror_version().await.unwrap(), 0);
    store
        .finish_import(
            v1,
            ImportStats {
                upserted: 2,
                ..Default::default()
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!(store.mirror_version().await.unwrap(), v1);

    let v2 = store.begin_import("two").await.unwrap();
    assert_eq!(v2, v1 + 1);
    store
        .upsert_records(&[person("001190012346", "Trần Thị Bình", v2)], 3)
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_records(&[a.0, person("001190000000", "X", v2).0], v2)
            .await
            .unwrap(),
        1
    );
    store
        .finish_import(v2, ImportStats::default(), 4)
        .await
        .unwrap();
    // b was identical, so only the deletion of a changed anything.
    assert_eq!(store.changed_since(v1, 10).await.unwrap(), Some(vec![a.0]));
    let mut all = store.changed_since(0, 10).await.unwrap().unwrap();
    all.sort();
    let mut want = vec![a.0, b.0];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(store.changed_since(0, 1).await.unwrap(), None);
}

async fn audit_round_trips(backend: Backend) {
    let (_db, store) = open(backend).await;
    let h = test_hasher();
    let mut verdict = Verdict::invalid();
    verdict.decision = Decision::Mismatch;
    verdict.reasons.insert(Reason::SexMismatch);
    let records: Vec<AuditRecord> = (0..2500)
        .map(|i| AuditRecord {
            audit_id: uuid::Uuid::now_v7().to_string(),
            recorded_at: 1_700_000_000_000_000 + i,
            caller: "carrier-a".into(),
            request_id: format!("r{i}"),
            job_id: (i % 2 == 0).then(|| "job".into()),
            purpose: Purpose::Cleanup,
            consent_ref: None,
            lookup_key: (i % 3 != 0).then(|| person("001190012345", "A", 1).0),
            msisdn_hash: Some(h.msisdn(&simverify::domain::Msisdn::parse("0912345678").unwrap())),
            key_id: 1,
            verdict,
            mirror_version: 7,
            latency_us: 42,
        })
        .collect();
    store.append_audit(&records, None, None).await.unwrap();
    assert_eq!(store.audit_count().await.unwrap(), 2500);
    for r in [&records[0], &records[1], &records[2499]] {
        assert_eq!(
            store.audit_by_id(&r.audit_id).await.unwrap().as_ref(),
            Some(r)
        );
    }
    assert_eq!(store.audit_by_id("nope").await.unwrap(), None);
    // audit_id is unique: a replayed batch is refused whole.
    assert!(store.append_audit(&records[..2], None, None).await.is_err());
    assert_eq!(store.audit_count().await.unwrap(), 2500);
}

/// `n` INVALID answers with ids `audit-00000`…, in order.
fn plain_records(n: i64, purpose: Purpose) -> Vec<AuditRecord> {
    (0..n)
        .map(|i| AuditRecord {
            audit_id: format!("audit-{i:05}"),
            recorded_at: 1_700_000_000_000_000 + i,
            caller: "carrier-a".into(),
            request_id: format!("r{i}"),
            job_id: None,
            purpose,
            consent_ref: None,
            lookup_key: None,
            msisdn_hash: None,
            key_id: 1,
            verdict: Verdict::invalid(),
            mirror_version: 1,
            latency_us: 1,
        })
        .collect()
}

async fn journal_marks_move_with_their_records(backend: Backend) {
    let (_db, store) = open(backend).await;
    let records = plain_records(20, Purpose::Activation);
    let log = store.audit_log_id().await.unwrap();
    assert_eq!(log.len(), 32);
    assert_eq!(store.audit_log_id().await.unwrap(), log);
    assert_eq!(store.audit_journal_progress("j1").await.unwrap(), None);
    let mark = |from, to| {
        Some(JournalMark {
            journal_id: "j1",
            from,
            to,
        })
    };
    store
        .append_audit(&records[..10], mark(0, 10), None)
        .await
        .unwrap();
    assert_eq!(store.audit_journal_progress("j1").await.unwrap(), Some(10));
    // A second indexer working from a stale mark changes nothing.
    assert!(matches!(
        store.append_audit(&records[10..], mark(0, 10), None).await,
        Err(StoreError::JournalConflict { expected: 0, .. })
    ));
    assert_eq!(store.audit_count().await.unwrap(), 10);
    assert_eq!(store.audit_size().await.unwrap(), 10);
    store
        .append_audit(&records[10..], mark(10, 20), None)
        .await
        .unwrap();
    assert_eq!(store.audit_journal_progress("j1").await.unwrap(), Some(20));
    assert_eq!(store.audit_size().await.unwrap(), 20);
    assert_eq!(store.audit_journal_progress("j2").await.unwrap(), None);
}

/// The indexer stores each tile with the batch that completes it; what its
/// runs could not complete (a failed batch, another writer's records in
/// between) a checkpoint computes from the stored leaves.
async fn tiles_are_stored_with_the_batch_that_completes_them(backend: Backend) {
    let (_db, store) = open(backend).await;
    let records = plain_records(1100, Purpose::Activation);
    let leaves: Vec<Hash> = (0..1100)
        .map(|i| merkle::leaf_hash(i as u64, &records[i]))
        .collect();
    let tile = |t: u64| (t, merkle::subtree(&leaves, t * TILE, (t + 1) * TILE));
    let mut b = TileBuilder::default();
    store
        .append_audit(&records[..300], None, Some(&mut b))
        .await
        .unwrap();
    assert_eq!(store.audit_tiles(0, 10).await.unwrap(), vec![tile(0)]);
    // A batch that fails (its ids are taken) stores nothing and leaves the
    // builder where it was.
    assert!(
        store
            .append_audit(&records[..2], None, Some(&mut b))
            .await
            .is_err()
    );
    store
        .append_audit(&records[300..700], None, Some(&mut b))
        .await
        .unwrap();
    assert_eq!(
        store.audit_tiles(0, 10).await.unwrap(),
        vec![tile(0), tile(1)]
    );
    // Another writer's records: this builder's next run does not continue
    // its last, so tiles 2 (512..768) and 3 (768..1024) are not its to
    // complete.
    store
        .append_audit(&records[700..800], None, None)
        .await
        .unwrap();
    store
        .append_audit(&records[800..], None, Some(&mut b))
        .await
        .unwrap();
    assert_eq!(
        store.audit_tiles(0, 10).await.unwrap(),
        vec![tile(0), tile(1)]
    );
    let all = simverify::audit::log::ensure_tiles(&store, 1100)
        .await
        .unwrap();
    assert_eq!(all, (0..4).map(|t| tile(t).1).collect::<Vec<_>>());
    assert_eq!(
        store.audit_tiles(0, 10).await.unwrap(),
        (0..4).map(tile).collect::<Vec<_>>()
    );
    let v = simverify::audit::log::verify_log(&store, None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 1100);
}

/// A catch-up batch larger than one statement's share (PostgreSQL splits
/// its insert, SQLite its `VALUES` lists) is stored whole, in order, with its
/// tiles, in one transaction.
async fn a_large_audit_batch_is_stored_whole(backend: Backend) {
    let (_db, store) = open(backend).await;
    let records = plain_records(12_345, Purpose::Cleanup);
    let mut b = TileBuilder::default();
    store
        .append_audit(&records, None, Some(&mut b))
        .await
        .unwrap();
    assert_eq!(store.audit_size().await.unwrap(), 12_345);
    assert_eq!(
        store.audit_tiles(0, 1000).await.unwrap().len(),
        12_345 / 256
    );
    for i in [0, 4_999, 5_000, 10_000, 12_344] {
        let r = store
            .audit_leaf_of(&records[i].audit_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.index, r.record), (i as u64, records[i].clone()));
    }
    let v = simverify::audit::log::verify_log(&store, None)
        .await
        .unwrap();
    assert_eq!((v.problem, v.records), (None, 12_345));
}

/// The gateway's minutely checkpoints fold complete tiles into a frontier
/// and read only what is new; their roots are the log's, with tiles
/// written by the appends or missing and filled from the leaves.
async fn successive_checkpoints_give_the_logs_roots(backend: Backend) {
    let (db, store) = open(backend).await;
    let signer = crate::helpers::test_signer(&db);
    let records = plain_records(2000, Purpose::Activation);
    let leaves: Vec<Hash> = (0..2000)
        .map(|i| merkle::leaf_hash(i as u64, &records[i]))
        .collect();
    let mut tiles = TileBuilder::default();
    let mut publisher = simverify::audit::log::CheckpointPublisher::default();
    // Appends with and without tiles, checkpoints between some of them.
    for (lo, hi, with_tiles, publish) in [
        (0, 100, true, true),
        (100, 300, true, true),
        (300, 700, false, false),
        (700, 1030, true, true),
        (1030, 1536, true, true),
        (1536, 1900, false, true),
    ] {
        let b = with_tiles.then_some(&mut tiles);
        store.append_audit(&records[lo..hi], None, b).await.unwrap();
        if publish {
            let c = publisher.publish(&store, &signer).await.unwrap().unwrap();
            assert_eq!(
                (c.size, c.root),
                (hi as u64, merkle::root(&leaves, hi as u64))
            );
        }
    }
    // A publisher that starts afresh (a restart) agrees.
    store
        .append_audit(&records[1900..], None, None)
        .await
        .unwrap();
    let again = simverify::audit::log::CheckpointPublisher::default()
        .publish(&store, &signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.root, merkle::root(&leaves, 2000));
    let v = simverify::audit::log::verify_log(&store, Some(&signer.public_key()))
        .await
        .unwrap();
    assert_eq!((v.problem, v.records, v.checkpoints), (None, 2000, 6));
}

async fn a_different_key_is_refused(backend: Backend) {
    let (_db, store) = open(backend).await;
    let h = test_hasher();
    store.check_key(1, &h.fingerprint()).await.unwrap();
    store.check_key(1, &h.fingerprint()).await.unwrap();
    let other = simverify::domain::KeyedHasher::new(&[9u8; 32], 1).unwrap();
    assert!(matches!(
        store.check_key(1, &other.fingerprint()).await,
        Err(StoreError::KeyMismatch { key_id: 1 })
    ));
}

/// An import streams its chunks into bulk inserts of many chunks each. On
/// PostgreSQL (a `COPY`) an ID that exists already, or repeats within one,
/// fails it as a whole, and its chunks then go through the upsert in file
/// order; on SQLite it is one transaction of upserts. Either way every row
/// arrives, none is counted twice, an ID's last row wins, and a deletion
/// finds the rows read before it.
async fn a_large_first_import_keeps_every_row_and_the_last_of_a_repeated_id(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut csv = Vec::new();
    simverify::r#gen::write_population(
        &simverify::r#gen::PopulationConfig::new(16_000, 7, TODAY),
        &mut csv,
    )
    .unwrap();
    let mut csv = String::from_utf8(csv).unwrap();
    let row = |n: usize| -> Vec<String> {
        let line = csv.lines().nth(n).unwrap();
        line.split(',').map(str::to_owned).collect()
    };
    // Chunks of 5,000 rows: the first is a bulk insert of its own; the other
    // three share the next, which the deletion at the end commits early.
    // Row 1 (the first insert) and row 7,000 (the second chunk) come back
    // renamed in the fourth chunk; row 12,000 (the third) is deleted there.
    let (first, again, gone) = (row(1), row(7_000), row(12_000));
    for (r, name, status) in [
        (&first, "Lê Văn Đầu", ""),
        (&again, "Lê Văn Cuối", ""),
        (&gone, gone[1].as_str(), "deleted"),
    ] {
        csv.push_str(&format!("{},{name},{},{},{status}\n", r[0], r[2], r[3]));
    }
    let report = crate::helpers::import(&store, &csv).await;
    assert_eq!(
        (
            report.rows_read,
            report.changed,
            report.unchanged,
            report.deleted,
            report.rejected
        ),
        (16_003, 16_002, 0, 1, 0)
    );
    assert_eq!(store.record_count().await.unwrap(), 15_999);
    let stored = |r: &[String], name: &str| {
        let (key, rec) = Identity::parse(&r[0], name, &r[2], &r[3], "", TODAY)
            .unwrap()
            .to_record(&test_hasher(), report.version);
        let store = store.clone();
        async move { (store.get_record(&key).await.unwrap(), rec) }
    };
    for (r, name) in [(&first, "Lê Văn Đầu"), (&again, "Lê Văn Cuối")] {
        let (got, want) = stored(r, name).await;
        let got = got.expect("a renamed record");
        assert_eq!(
            (got.name, got.folded, got.dob),
            (want.name, want.folded, want.dob)
        );
    }
    assert_eq!(stored(&gone, &gone[1]).await.0, None);
}

both_backends!(
    upsert_is_idempotent_and_counts_changes,
    get_records_returns_only_existing,
    versions_and_changes,
    audit_round_trips,
    journal_marks_move_with_their_records,
    tiles_are_stored_with_the_batch_that_completes_them,
    a_large_audit_batch_is_stored_whole,
    successive_checkpoints_give_the_logs_roots,
    a_different_key_is_refused,
    a_large_first_import_keeps_every_row_and_the_last_of_a_repeated_id,
);
