//! Micro-benchmarks of the pure domain (parsing, normalisation, keyed
//! hashing and matching, on synthetic but realistic inputs from `gen`), and
//! of the mirror cache's hit and miss paths at its default size.
//!
//! Run: `cargo bench --bench domain`.

use std::hint::black_box;

mod common;

/// The allocator the gateway runs with (`src/main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use simverify::domain::{
    CivilDate, FullName, Identity, KeyedHasher, MirrorRecord, RawRequest, Sex, VerifyInput, decide,
};
use simverify::r#gen::{PopulationConfig, SubscriberConfig, write_population, write_subscribers};

const TODAY: CivilDate = CivilDate {
    year: 2026,
    month: 1,
    day: 1,
};

struct Row {
    msisdn: String,
    id: String,
    name: String,
    dob: String,
    sex: Option<Sex>,
}

fn inputs(
    n: u64,
) -> (
    KeyedHasher,
    Vec<Row>,
    std::collections::HashMap<[u8; 32], MirrorRecord>,
) {
    let hasher = KeyedHasher::new(&[42u8; 32], 1).unwrap();
    let mut pop = Vec::new();
    write_population(&PopulationConfig::new(n, 7, TODAY), &mut pop).unwrap();
    let mut subs = Vec::new();
    write_subscribers(&pop[..], &SubscriberConfig::new(7, TODAY), &mut subs).unwrap();
    let mut mirror = std::collections::HashMap::new();
    for r in csv::Reader::from_reader(&pop[..]).records() {
        let r = r.unwrap();
        if let Ok(p) = Identity::parse(&r[0], &r[1], &r[2], &r[3], &r[4], TODAY) {
            let (k, rec) = p.to_record(&hasher, 1);
            mirror.insert(k.0, rec);
        }
    }
    let rows = csv::Reader::from_reader(&subs[..])
        .records()
        .map(|r| {
            let r = r.unwrap();
            Row {
                msisdn: r[0].to_owned(),
                id: r[1].to_owned(),
                name: r[2].to_owned(),
                dob: r[3].to_owned(),
                sex: Sex::parse(&r[4]),
            }
        })
        .collect();
    (hasher, rows, mirror)
}

fn raw(r: &Row) -> RawRequest<'_> {
    RawRequest {
        request_id: "bench-1",
        msisdn: &r.msisdn,
        id_number: &r.id,
        full_name: &r.name,
        date_of_birth: &r.dob,
        sex: r.sex,
        consent_ref: None,
    }
}

fn bench(c: &mut Criterion) {
    let (hasher, rows, mirror) = inputs(10_000);
    let mut g = c.benchmark_group("domain");
    g.throughput(Throughput::Elements(rows.len() as u64));

    g.bench_function("name_normalise", |b| {
        b.iter(|| {
            for r in &rows {
                black_box(FullName::parse(black_box(&r.name)).ok());
            }
        })
    });
    g.bench_function("parse_request", |b| {
        b.iter(|| {
            for r in &rows {
                black_box(VerifyInput::parse(&raw(r), TODAY).ok());
            }
        })
    });
    let parsed: Vec<VerifyInput> = rows
        .iter()
        .filter_map(|r| VerifyInput::parse(&raw(r), TODAY).ok())
        .collect();
    g.bench_function("keyed_hash_probe", |b| {
        b.iter(|| {
            for p in &parsed {
                black_box(p.clone().into_probe(&hasher).lookup_key);
            }
        })
    });
    g.bench_function("pipeline_parse_hash_match", |b| {
        b.iter(|| {
            for r in &rows {
                if let Ok(input) = VerifyInput::parse(&raw(r), TODAY) {
                    let probe = input.into_probe(&hasher);
                    black_box(decide(&probe, mirror.get(&probe.lookup_key.0)));
                }
            }
        })
    });
    g.finish();
}

/// The mirror cache at the configured size: a hit, and a miss's insert.
fn cache(c: &mut Criterion) {
    use common::{lookup_key as key, mirror_record as record};
    use simverify::cache::{CacheConfig, Lookup, MirrorCache};
    const N: u64 = 1_000_000;
    let cache = MirrorCache::new(CacheConfig {
        max_entries: N,
        ..CacheConfig::default()
    });
    for i in 0..N / 2 {
        cache.insert(key(i), Some(&record(i)));
    }
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1000));
    let mut at = 0u64;
    g.bench_function("hit_half_full_1M", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                at = (at + 7919) % (N / 2);
                black_box(cache.get(&key(at)));
            }
        })
    });
    // A warm stream's batch: 1,000 keys looked up one by one, and the same
    // through `lookup_many`, which reads each step of the lookups ahead.
    // Keys are computed beforehand, 64 batches of them, so that a batch's
    // lines are not left in the CPU's caches by the previous iteration.
    let batches: Vec<Vec<_>> = (0..64u64)
        .map(|b| {
            (0..1000u64)
                .map(|i| key((b * 1000 + i) * 7919 % (N / 2)))
                .collect()
        })
        .collect();
    let mut turn = 0usize;
    g.bench_function("hit_batch_one_by_one", |b| {
        b.iter(|| {
            turn = (turn + 1) % batches.len();
            for k in &batches[turn] {
                black_box(cache.lookup(k));
            }
        })
    });
    g.bench_function("hit_batch_lookup_many", |b| {
        b.iter(|| {
            turn = (turn + 1) % batches.len();
            black_box(cache.lookup_many(&batches[turn]));
        })
    });
    let mut next = N / 2;
    g.bench_function("insert_miss", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                // Fresh keys; past capacity they evict, as in a cold run.
                next += 1;
                cache.insert(key(next), Some(&record(next)));
            }
        })
    });
    // The whole miss path of a cold request: the lookup that misses, then
    // caching what the store returned.
    g.bench_function("miss_then_fill", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                next += 1;
                let k = key(next);
                match cache.lookup(&k) {
                    Lookup::Miss(miss) => cache.fill(k, miss, Some(&record(next))),
                    Lookup::Hit(_) => panic!("key {next} is new"),
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench, cache);
criterion_main!(benches);
