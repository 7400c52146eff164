//! Audit queries on a large log: fills SQLite and PostgreSQL audit logs with
//! N records (10 million by default) through the store's own append path,
//! then times filtered first pages and a deep page.
//!
//! `cargo bench --bench auditq -- [--records N] [--pg URL]`

use std::time::{Duration, Instant};

use clap::Parser;
use simverify::domain::{
    AuditFilter, AuditRecord, Decision, FieldResult, KeyedHasher, Msisdn, NameTier, Purpose,
    Reasons, RecommendedAction, Verdict,
};
use simverify::store::Store;
use sqlx::Connection;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg: String,
    #[arg(long, hide = true)]
    bench: bool,
}

const DAY_US: i64 = 86_400_000_000;
const CARRIERS: [&str; 5] = ["viettel", "vinaphone", "mobifone", "vietnamobile", "itel"];

fn record(i: u64, hasher: &KeyedHasher, start_us: i64, span_us: i64, n: u64) -> AuditRecord {
    // Deterministic spread: 1M subscribers, 5 carriers, 60 days in order.
    let subscriber = (i.wrapping_mul(2_654_435_761) % 1_000_000) as u32;
    let msisdn = Msisdn::parse(&format!("09{:08}", 10_000_000 + subscriber)).unwrap();
    let id =
        simverify::domain::CitizenId::from_parts(1, simverify::domain::Sex::Male, 1990, subscriber)
            .unwrap();
    let decision = match i % 10 {
        0..=6 => Decision::Verified,
        7 | 8 => Decision::Mismatch,
        _ => Decision::NotFound,
    };
    AuditRecord {
        audit_id: format!("bench-{i:012}"),
        recorded_at: start_us + (span_us as i128 * i as i128 / n as i128) as i64,
        caller: CARRIERS[(i % 5) as usize].into(),
        request_id: format!("req-{i}"),
        job_id: Some(format!("job-{}", i / 1_000_000).into()),
        purpose: Purpose::Cleanup,
        consent_ref: None,
        lookup_key: Some(hasher.lookup_key(&id)),
        msisdn_hash: Some(hasher.msisdn(&msisdn)),
        key_id: 1,
        verdict: Verdict {
            decision,
            id_number: FieldResult::Match,
            full_name: FieldResult::Match,
            date_of_birth: FieldResult::Match,
            sex: FieldResult::NotProvided,
            name_tier: Some(NameTier::Exact),
            name_score: 100,
            action: RecommendedAction::None,
            reasons: Reasons::default(),
        },
        mirror_version: 1,
        latency_us: 800,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(args: Args) {
    let hasher = KeyedHasher::new(&[0x42; 32], 1).unwrap();
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = std::path::Path::new(&target).join("auditq");
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = dir.join("audit.db");
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", sqlite.display()));
    }
    let mut admin = sqlx::PgConnection::connect(&args.pg).await.unwrap();
    for sql in [
        "DROP DATABASE IF EXISTS simverify_auditq WITH (FORCE)",
        "CREATE DATABASE simverify_auditq",
    ] {
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }
    let base = args
        .pg
        .rsplit_once('/')
        .map_or(args.pg.as_str(), |(b, _)| b)
        .to_owned();
    let n = args.records;
    let now = simverify::clock::now_micros();
    let (start, span) = (now - 60 * DAY_US, 60 * DAY_US);
    println!("audit log of {n} records over 60 days, 5 carriers, 1M subscribers");
    println!();
    println!("| backend | fill rows/s | query | first page (ms, median of 20) |");
    println!("|---|---:|---|---:|");
    for (name, url) in [
        ("SQLite", format!("sqlite://{}", sqlite.display())),
        ("PostgreSQL", format!("{base}/simverify_auditq")),
    ] {
        let store = Store::connect(&url).await.unwrap();
        store.ensure_audit_partitions(now).await.unwrap();
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let chunk: Vec<_> = (i..(i + 10_000).min(n))
                .map(|k| record(k, &hasher, start, span, n))
                .collect();
            store.append_audit(&chunk, None, None).await.unwrap();
            i += chunk.len() as u64;
        }
        let fill = n as f64 / t.elapsed().as_secs_f64();
        let probe = record(n / 2, &hasher, start, span, n);
        let day = start + 30 * DAY_US;
        let queries: Vec<(&str, AuditFilter)> = vec![
            (
                "by subscriber MSISDN",
                AuditFilter {
                    msisdn_hash: probe.msisdn_hash,
                    ..Default::default()
                },
            ),
            (
                "by subscriber ID",
                AuditFilter {
                    lookup_key: probe.lookup_key,
                    ..Default::default()
                },
            ),
            (
                "by carrier and day",
                AuditFilter {
                    caller: Some("mobifone".into()),
                    since: Some(day),
                    until: Some(day + DAY_US),
                    ..Default::default()
                },
            ),
            (
                "by carrier, decision NOT_FOUND",
                AuditFilter {
                    caller: Some("itel".into()),
                    decision: Some(Decision::NotFound),
                    ..Default::default()
                },
            ),
            (
                "by job id",
                AuditFilter {
                    job_id: Some("job-3".into()),
                    ..Default::default()
                },
            ),
        ];
        for (q, f) in queries {
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..20 {
                let t = Instant::now();
                rows = store.query_audit(&f, None, 100).await.unwrap().len();
                times.push(t.elapsed());
            }
            println!(
                "| {name} | {fill:.0} | {q} ({rows} rows) | {:.2} |",
                median(times).as_secs_f64() * 1000.0
            );
        }
        // A deep page: the cursor is a position, so page 1000 costs what page 1 does.
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            store
                .query_audit(
                    &AuditFilter {
                        caller: Some("viettel".into()),
                        ..Default::default()
                    },
                    Some((n / 2) as i64),
                    100,
                )
                .await
                .unwrap();
            times.push(t.elapsed());
        }
        println!(
            "| {name} | {fill:.0} | by carrier, page at the middle of the log | {:.2} |",
            median(times).as_secs_f64() * 1000.0
        );
        store.close().await;
    }
}

fn main() {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args));
}
