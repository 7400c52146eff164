//! Tamper evidence: a malicious operator edits the audit tables directly;
//! `simverify audit verify` names the first bad position, and an inclusion
//! proof of an altered record fails offline with only the public key.

use std::path::Path;
use std::process::Command;

use simverify::proto::{Sex, VerifyBatch, VerifyBatchResult};
use sqlx::Connection;
use tokio_stream::StreamExt;

use crate::both_backends;
use crate::helpers::{AppOptions, Backend, TestApp, spawn_app_with};
use crate::verify::request;

async fn sql(app_url: &str, backend: Backend, statements: &[&str]) {
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(app_url).await.unwrap();
            for s in statements {
                sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(app_url).await.unwrap();
            for s in statements {
                sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

fn cli(url: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simverify"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SIMVERIFY__DATA_DIR", dir)
        .env("SIMVERIFY__DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn verify_many(app: &TestApp, n: usize) -> Vec<String> {
    let mut client = app.client().await;
    let khai = request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    );
    // Small batches: a batch's records share one time, and the retention
    // test cuts the log at a time inside a run of batches.
    let batches: Vec<VerifyBatch> = (0..n.div_ceil(10))
        .map(|i| VerifyBatch {
            batch_seq: i as u64,
            job_id: String::new(),
            requests: (0..10.min(n - i * 10)).map(|_| khai.clone()).collect(),
        })
        .collect();
    let out: Vec<VerifyBatchResult> = client
        .verify_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    app.synced().await;
    out.into_iter()
        .flat_map(|b| b.results)
        .map(|r| r.audit_id)
        .collect()
}

async fn tampering_is_caught(backend: Backend) {
    let app = spawn_app_with(backend, AppOptions::default()).await;
    let ids = verify_many(&app, 600).await;
    simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap();
    let mut more = verify_many(&app, 50).await;
    let last = simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.size, 650);
    let mut all = ids.clone();
    all.append(&mut more);
    let pubkey = format!("ed25519:{}", hex::encode(app.signer.public_key()));
    let url = app.db.url.clone();
    let dir = app.db.dir.path().join("cli");
    let verify = || cli(&url, &dir, &["audit", "verify", "--pubkey", &pubkey]);

    let (ok, out) = verify();
    assert!(ok && out.contains("audit log intact: 650 records"), "{out}");
    // An inclusion proof, checked online, saved, and checked again offline.
    let proof = app.db.dir.path().join("proof.json");
    let server = app.endpoint();
    let prove = |id: &str, save: &Path| {
        cli(
            &url,
            &dir,
            &[
                "audit",
                "prove",
                "--insecure-plaintext",
                "--server",
                &server,
                "--pubkey",
                &pubkey,
                "--audit-id",
                id,
                "--save",
                save.to_str().unwrap(),
            ],
        )
    };
    let (ok, out) = prove(&all[100], &proof);
    assert!(ok && out.contains("proof OK"), "{out}");
    let (ok, out) = cli(
        &url,
        &dir,
        &[
            "audit",
            "prove",
            "--pubkey",
            &pubkey,
            "--proof",
            proof.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("proof OK: record"), "{out}");
    // With another key the same proof fails.
    let other = format!("ed25519:{}", hex::encode([7u8; 32]));
    let (ok, out) = cli(
        &url,
        &dir,
        &[
            "audit",
            "prove",
            "--pubkey",
            &other,
            "--proof",
            proof.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("PROOF FAILED"), "{out}");

    // 1. A decision is edited in place.
    sql(
        &url,
        backend,
        &["UPDATE audit_log SET decision = 2 WHERE leaf_index = 100"],
    )
    .await;
    let (ok, out) = verify();
    assert!(!ok && out.contains("first bad position 100"), "{out}");
    let altered = app.db.dir.path().join("altered.json");
    let at100 = app.store.audit_records_from(100, 1).await.unwrap()[0]
        .record
        .audit_id
        .clone();
    let (ok, out) = prove(&at100, &altered);
    assert!(!ok && out.contains("PROOF FAILED"), "{out}");
    let (ok, out) = cli(
        &url,
        &dir,
        &[
            "audit",
            "prove",
            "--pubkey",
            &pubkey,
            "--proof",
            altered.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("PROOF FAILED"), "offline: {out}");
    sql(
        &url,
        backend,
        &["UPDATE audit_log SET decision = 1 WHERE leaf_index = 100"],
    )
    .await;
    assert!(verify().0, "restored");

    // 2. Two records are swapped.
    sql(
        &url,
        backend,
        &[
            "UPDATE audit_log SET leaf_index = -1 WHERE leaf_index = 300",
            "UPDATE audit_log SET leaf_index = 300 WHERE leaf_index = 310",
            "UPDATE audit_log SET leaf_index = 310 WHERE leaf_index = -1",
        ],
    )
    .await;
    let (ok, out) = verify();
    assert!(!ok && out.contains("first bad position 300"), "{out}");
    sql(
        &url,
        backend,
        &[
            "UPDATE audit_log SET leaf_index = -1 WHERE leaf_index = 300",
            "UPDATE audit_log SET leaf_index = 300 WHERE leaf_index = 310",
            "UPDATE audit_log SET leaf_index = 310 WHERE leaf_index = -1",
        ],
    )
    .await;
    assert!(verify().0, "restored");

    // 3. A forged record is appended.
    sql(&url, backend, &["INSERT INTO audit_log (audit_id, recorded_at, caller, request_id, job_id, purpose, consent_ref, \
        lookup_key, msisdn_hash, key_id, decision, id_result, name_result, dob_result, sex_result, name_tier, \
        name_score, action, reasons, mirror_version, latency_us, leaf_index, leaf_hash) \
        SELECT 'forged-1', recorded_at, caller, request_id, job_id, purpose, consent_ref, lookup_key, msisdn_hash, \
        key_id, decision, id_result, name_result, dob_result, sex_result, name_tier, name_score, action, reasons, \
        mirror_version, latency_us, 650, leaf_hash FROM audit_log WHERE leaf_index = 10"])
    .await;
    let (ok, out) = verify();
    assert!(!ok && out.contains("first bad position 650"), "{out}");
    sql(
        &url,
        backend,
        &["DELETE FROM audit_log WHERE audit_id = 'forged-1'"],
    )
    .await;
    assert!(verify().0, "restored");

    // 4. The tail is truncated, and the head row rewound to hide it.
    sql(
        &url,
        backend,
        &[
            "DELETE FROM audit_log WHERE leaf_index >= 640",
            "UPDATE audit_head SET size = 640",
        ],
    )
    .await;
    let (ok, out) = verify();
    assert!(
        !ok && out.contains("first bad position 640") && out.contains("truncated"),
        "{out}"
    );

    // 5. A record in the middle is deleted.
    sql(
        &url,
        backend,
        &["DELETE FROM audit_log WHERE leaf_index = 200"],
    )
    .await;
    let (ok, out) = verify();
    assert!(
        !ok && out.contains("first bad position 200") && out.contains("missing"),
        "{out}"
    );
    app.stop().await;
}

async fn consistency_between_checkpoints(backend: Backend) {
    let app = spawn_app_with(backend, AppOptions::default()).await;
    verify_many(&app, 300).await;
    let first = simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap()
        .unwrap();
    verify_many(&app, 333).await;
    let second = simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap()
        .unwrap();
    let pubkey = format!("ed25519:{}", hex::encode(app.signer.public_key()));
    let dir = app.db.dir.path().join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out) = cli(
        &app.db.url,
        &dir,
        &[
            "audit",
            "consistency",
            "--insecure-plaintext",
            "--server",
            &app.endpoint(),
            "--pubkey",
            &pubkey,
            "--first",
            &first.size.to_string(),
            "--save",
            dir.join("consistency.json").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let expected = format!(
        "the log of size {} is a prefix of the log of size {}",
        first.size, second.size
    );
    assert!(out.contains(&expected), "{out}");
    let _db = app.stop().await; // keeps the directory holding the saved proof
    // Offline, from the saved proof and the public key alone.
    let saved = dir.join("consistency.json");
    let (ok, out) = cli(
        "sqlite:///nonexistent/never-opened.db",
        &dir,
        &[
            "audit",
            "consistency",
            "--pubkey",
            &pubkey,
            "--proof",
            saved.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains(&expected), "{out}");
    // A proof of a different history does not verify.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    json["path"][0] = serde_json::Value::String(hex::encode([9u8; 32]));
    std::fs::write(&saved, serde_json::to_vec(&json).unwrap()).unwrap();
    let (ok, out) = cli(
        "sqlite:///nonexistent/never-opened.db",
        &dir,
        &[
            "audit",
            "consistency",
            "--pubkey",
            &pubkey,
            "--proof",
            saved.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("PROOF FAILED"), "{out}");
}

async fn retention_keeps_the_rest_verifiable(backend: Backend) {
    let app = spawn_app_with(backend, AppOptions::default()).await;
    let mut all = verify_many(&app, 300).await;
    simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap();
    all.extend(verify_many(&app, 300).await);
    simverify::audit::log::publish_checkpoint(&app.store, &app.signer)
        .await
        .unwrap();
    // Just after every one of the first 341 records: a stream answers
    // several batches at once, so record times are not in log order and
    // the time of record 340 alone could precede an earlier record's.
    let cutoff = 1 + app
        .store
        .audit_records_from(0, 341)
        .await
        .unwrap()
        .iter()
        .map(|r| r.record.recorded_at)
        .max()
        .unwrap();
    let r = simverify::audit::log::apply_retention(&app.store, &app.signer, cutoff)
        .await
        .unwrap();
    assert!(r.start > 340 && r.start < 600, "{r:?}");
    assert_eq!(r.removed, r.start);
    assert_eq!(app.store.audit_count().await.unwrap() as u64, 600 - r.start);

    let pubkey = format!("ed25519:{}", hex::encode(app.signer.public_key()));
    let (url, dir, server) = (
        app.db.url.clone(),
        app.db.dir.path().join("cli"),
        app.endpoint(),
    );
    let (ok, out) = cli(&url, &dir, &["audit", "verify", "--pubkey", &pubkey]);
    assert!(
        ok && out.contains("audit log intact: 600 records") && out.contains("removed by retention"),
        "{out}"
    );
    let proof = |id: &str| {
        cli(
            &url,
            &dir,
            &[
                "audit",
                "prove",
                "--insecure-plaintext",
                "--server",
                &server,
                "--pubkey",
                &pubkey,
                "--audit-id",
                id,
            ],
        )
    };
    let kept = app.store.audit_records_from(500, 1).await.unwrap()[0]
        .record
        .audit_id
        .clone();
    let (ok, out) = proof(&kept);
    assert!(ok && out.contains("proof OK"), "{out}");
    let gone = {
        let mut g = None;
        for id in &all {
            if app.store.audit_by_id(id).await.unwrap().is_none() {
                g = Some(id.clone());
                break;
            }
        }
        g.expect("some records were removed")
    };
    let (ok, _) = proof(&gone);
    assert!(!ok, "a removed record cannot be proved");
    let (ok, out) = cli(
        &url,
        &dir,
        &[
            "audit",
            "consistency",
            "--insecure-plaintext",
            "--server",
            &server,
            "--pubkey",
            &pubkey,
            "--first",
            "300",
        ],
    );
    assert!(ok, "{out}");
    // Tampering with what remains is still caught.
    sql(
        &url,
        backend,
        &["UPDATE audit_log SET caller = 'someone-else' WHERE leaf_index = 450"],
    )
    .await;
    let (ok, out) = cli(&url, &dir, &["audit", "verify", "--pubkey", &pubkey]);
    assert!(!ok && out.contains("first bad position 450"), "{out}");
    app.stop().await;
}

/// PostgreSQL keeps audit records in monthly partitions; retention drops a
/// whole month at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_partitions_are_dropped_by_retention_postgres() {
    use simverify::domain::{AuditRecord, Purpose, Verdict};
    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let store = simverify::store::Store::connect(&db.url).await.unwrap();
    let now = simverify::clock::now_micros();
    store.ensure_audit_partitions(now).await.unwrap();
    let parts = || async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_log' ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        names
    };
    let before = parts().await;
    assert_eq!(before.len(), 5, "default + four months: {before:?}");
    // Records from last month, then this month.
    let this_month = simverify::config::retention_cutoff(now, 0);
    let record = |i: i64, at: i64| AuditRecord {
        audit_id: format!("r-{i}"),
        recorded_at: at,
        caller: "carrier-a".into(),
        request_id: format!("q-{i}"),
        job_id: None,
        purpose: Purpose::Cleanup,
        consent_ref: None,
        lookup_key: None,
        msisdn_hash: None,
        key_id: 1,
        verdict: Verdict::invalid(),
        mirror_version: 1,
        latency_us: 1,
    };
    let old: Vec<_> = (0..300)
        .map(|i| record(i, this_month - 86_400_000_000 + i))
        .collect();
    let new: Vec<_> = (300..400).map(|i| record(i, this_month + i)).collect();
    store.append_audit(&old, None, None).await.unwrap();
    store.append_audit(&new, None, None).await.unwrap();
    let key = db.dir.path().join("k");
    let signer = simverify::audit::log::Signer::load_or_create(&key, true).unwrap();
    let r = simverify::audit::log::apply_retention(&store, &signer, this_month)
        .await
        .unwrap();
    assert_eq!((r.start, r.removed), (300, 300));
    let after = parts().await;
    assert_eq!(after.len(), 4, "last month's partition is gone: {after:?}");
    let v = simverify::audit::log::verify_log(&store, Some(&signer.public_key()))
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    assert_eq!((v.records, v.pruned), (400, 300));
    store.close().await;
}

both_backends!(
    tampering_is_caught,
    consistency_between_checkpoints,
    retention_keeps_the_rest_verifiable,
);
