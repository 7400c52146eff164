//! Load generator: the gateway and a bare tonic echo server of the same
//! contract, driven by the same clients with the same settings in one run,
//! so the gateway's cost can be quoted as a ratio of the transport's.
//!
//! `cargo bench --bench loadgen -- [--quick] [--people N] [--rows N]
//!  [--seconds S] [--rounds N] [--round-seconds S] [--pg URL]
//!  [--only TAG,TAG] [--skip TAG,TAG]`
//!
//! Everything runs with mutual TLS and the durable audit log. Scenarios
//! (tags in brackets select them with `--only`/`--skip`):
//! - cache memory: RSS growth per cached mirror record [memory];
//! - mirror import into SQLite and PostgreSQL, and a raw `COPY` of the same
//!   rows into PostgreSQL as the import's ceiling [import];
//! - unary Verify at several concurrencies, cache warm [unary]; every
//!   gateway run between two echo runs of the same shape, its ratio taken
//!   against their mean; and once against an echo whose answers wait for a
//!   shared tick, as the journal's group commit makes answers wait [held];
//! - unary Verify at the target shape (4×64) in alternating rounds: echo,
//!   gateway, echo, gateway, …, echo, each round's ratio against the echo
//!   runs on either side of it, and the median over the rounds [unary,
//!   rounds]: the machine's speed moves by tens of percent within minutes,
//!   and one pair of runs cannot tell that from the gateway's cost;
//! - VerifyStream with several batch sizes, cache cold [stream, cold] then
//!   warm [stream, warm];
//! - the `simverify batch run` binary over the subscriber file: the cleanup
//!   client with its CSV, validation, output and checkpoints, in a process
//!   of its own [batch];
//!
//! each against the echo [echo], then the gateway on SQLite [sqlite] and on
//! PostgreSQL [postgres]. After every gateway scenario the run waits for the
//! audit journal to be indexed and reports how long that took. The report
//! ends with the number of errors logged during the run: the gateway retries
//! what fails in the background, so a run with errors can still look sound.

mod common;

/// The allocator the gateway runs with (`src/main.rs`). The echo shares the
/// process, so both sides of every ratio run on it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use simverify::config::{LimitsSection, Role};
use simverify::grpc::auth::{Principal, PrincipalMap};
use simverify::grpc::{Application, Security, ServerConfig};
use simverify::proto as pb;
use simverify::store::Store;
use simverify::verifier::{Verifier, VerifierConfig};
use sqlx::Connection;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser, Debug)]
struct Args {
    /// Small sizes and short runs, to check the harness.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    people: Option<u64>,
    #[arg(long)]
    rows: Option<u64>,
    /// Seconds per unary scenario.
    #[arg(long)]
    seconds: Option<u64>,
    /// Alternating gateway/echo rounds at the target shape, per backend
    /// (0: none).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per run within the alternating rounds.
    #[arg(long)]
    round_seconds: Option<u64>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg: String,
    /// Run only scenarios carrying every one of these tags.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip scenarios carrying any of these tags.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Batch sizes of the streaming scenarios (the warm ones; the cold pass
    /// always uses 1,000).
    #[arg(long, value_delimiter = ',', default_values_t = STREAM_BATCHES)]
    stream_batches: Vec<usize>,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: measure one cache's memory in this (fresh) process and
    /// print bytes per entry. `cache` or `moka`, with the entry count.
    #[arg(long, hide = true, num_args = 2, value_names = ["KIND", "ENTRIES"])]
    memory_probe: Vec<String>,
}

impl Args {
    fn wants(&self, tags: &[&str]) -> bool {
        self.only.iter().all(|t| tags.contains(&t.as_str()))
            && !self.skip.iter().any(|t| tags.contains(&t.as_str()))
    }
}

/// (connections, calls in flight per connection).
const UNARY_SHAPES: [(usize, usize); 3] = [(1, 16), (4, 64), (8, 128)];
/// The echo's rows, which the gateway's ratios refer to, and the held
/// echo's (see [`Echo`]).
const ECHO: &str = "bare tonic echo";
const HELD_ECHO: &str = "bare tonic echo, answers held for a 1.8 ms tick";
/// The shape the targets are quoted at.
const UNARY_TARGET_SHAPE: (usize, usize) = (4, 64);
const STREAM_BATCHES: [usize; 3] = [100, 1000, 5000];
/// VerifyStream messages in flight (the same as `batch run`'s default).
const STREAM_WINDOW: usize = 8;

// ---------------------------------------------------------------- echo

/// The bare echo. With `hold`, every unary answer waits for the next tick of
/// a thread that wakes all waiting answers at once, as the journal writer
/// wakes a group's answers after its fsync: the echo then pays what holding
/// each call until its group is durable costs the transport, without the
/// gateway's own work.
#[derive(Clone)]
struct Echo {
    hold: Option<Arc<tokio::sync::Notify>>,
}

/// The period of the held echo's ticks: about the journal's group period at
/// the unary 4×64 shape on this machine (2,736 `fdatasync`s in 5 s, counted
/// with `perf stat -e syscalls:sys_enter_fdatasync`).
const HOLD_TICK: Duration = Duration::from_micros(1800);

fn echo_answer(r: &pb::VerifyRequest) -> pb::VerifyResponse {
    pb::VerifyResponse {
        request_id: r.request_id.clone(),
        decision: pb::Decision::Verified as i32,
        id_number: pb::FieldResult::Match as i32,
        full_name: pb::FieldResult::Match as i32,
        date_of_birth: pb::FieldResult::Match as i32,
        sex: pb::FieldResult::Match as i32,
        name_tier: pb::NameTier::Exact as i32,
        name_score: 100,
        recommended_action: pb::RecommendedAction::None as i32,
        reasons: Vec::new(),
        audit_id: "01a2050a-0000-7000-8000-000000000000".into(),
        mirror_version: 1,
        violations: Vec::new(),
    }
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<pb::VerifyBatchResult, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::verification_server::Verification for Echo {
    async fn verify(
        &self,
        request: tonic::Request<pb::VerifyRequest>,
    ) -> Result<tonic::Response<pb::VerifyResponse>, tonic::Status> {
        if let Some(tick) = &self.hold {
            tick.notified().await;
        }
        Ok(tonic::Response::new(echo_answer(request.get_ref())))
    }

    type VerifyStreamStream = EchoStream;

    async fn verify_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::VerifyBatch>>,
    ) -> Result<tonic::Response<EchoStream>, tonic::Status> {
        let out = request.into_inner().map(|b| {
            let b = b?;
            Ok(pb::VerifyBatchResult {
                batch_seq: b.batch_seq,
                results: b.requests.iter().map(echo_answer).collect(),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

// ---------------------------------------------------------------- setup

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn file(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }
}

async fn spawn_echo(
    pki: &Pki,
    hold: bool,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let hold = hold.then(|| {
        let tick = Arc::new(tokio::sync::Notify::new());
        let t = Arc::downgrade(&tick);
        // Ticks while the server (which holds the only strong reference)
        // lives, so that it does not wake the machine during later runs.
        std::thread::spawn(move || {
            while let Some(t) = t.upgrade() {
                t.notify_waiters();
                drop(t);
                std::thread::sleep(HOLD_TICK);
            }
        });
        tick
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(pki.file("server.pem")).unwrap(),
            std::fs::read(pki.file("server.key")).unwrap(),
        ))
        .client_ca_root(Certificate::from_pem(
            std::fs::read(pki.file("ca.pem")).unwrap(),
        ));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // `serve_with_incoming` ignores the builder's `tcp_nodelay`: the incoming
    // stream sets it, as the gateway's accept loop does. Without it the echo
    // ran with Nagle's algorithm, which coalesced its answers into fewer
    // writes and stalled some for the peer's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(
            pb::verification_server::VerificationServer::new(Echo { hold })
                .max_decoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        });
    tokio::spawn(server);
    (addr, tx)
}

struct Gateway {
    addr: std::net::SocketAddr,
    verifier: Option<Verifier>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), simverify::grpc::ServeError>>,
    store: Store,
    /// Cache lookups counted at the previous [`Gateway::indexed`].
    lookups: std::sync::Mutex<simverify::cache::LookupCounts>,
}

/// What a gateway scenario left behind: how long the audit journal took to
/// be indexed after it, and the share of its mirror lookups the cache served.
#[derive(Clone, Copy)]
struct After {
    indexed: Duration,
    hits: f64,
}

impl After {
    fn cells(ix: &Option<After>) -> String {
        ix.map_or("– | –".into(), |a| {
            format!("{:.1} | {:.1}", a.indexed.as_secs_f64(), 100.0 * a.hits)
        })
    }
}

async fn spawn_gateway(
    pki: &Pki,
    url: &str,
    hasher: &simverify::domain::KeyedHasher,
    journal: &Path,
) -> Gateway {
    let store = Store::connect(url).await.unwrap();
    let _ = std::fs::remove_dir_all(journal);
    let mode = simverify::audit::CommitMode::Journal(simverify::audit::JournalConfig::new(journal));
    // Negative entries live as long as positive ones here: with the default
    // 60 s, whether the 2% unknown IDs were still cached at a warm pass
    // depended on how long the indexing wait before it took, which moved
    // the warm figures by itself.
    let mut config = VerifierConfig::new(mode);
    config.cache.negative_ttl = config.cache.positive_ttl;
    let (verifier, tasks) = Verifier::start(hasher.clone(), store.clone(), config)
        .await
        .unwrap();
    let unlimited = LimitsSection {
        rate_per_sec: 1e9,
        burst: 1_000_000_000,
        daily_quota: u64::MAX / 4,
    };
    let mut principals = PrincipalMap::default();
    let entry = simverify::config::PrincipalEntry {
        subject: simverify::pki::client_uri("carrier-a", Role::Carrier),
        carrier_id: "carrier-a".into(),
        role: Role::Carrier,
        rate_per_sec: None,
        burst: None,
        daily_quota: None,
    };
    principals.insert(&entry.subject, Principal::new(&entry, &unlimited));
    let tls = simverify::config::TlsSection {
        cert: pki.file("server.pem"),
        key: pki.file("server.key"),
        client_ca: pki.file("ca.pem"),
    };
    let signer =
        simverify::audit::log::Signer::load_or_create(&pki.file("audit-signing.key"), true)
            .unwrap();
    let cfg = ServerConfig {
        max_concurrent_requests: 4096,
        audit_drain: Duration::from_secs(3600),
        security: Security::MutualTls { tls, principals },
        ..ServerConfig::plaintext("127.0.0.1:0".parse().unwrap(), Arc::new(signer))
    };
    let kept = verifier.clone();
    let app = Application::build(cfg, verifier, tasks).await.unwrap();
    let addr = app.local_addr();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Gateway {
        addr,
        verifier: Some(kept),
        stop,
        done,
        store,
        lookups: Default::default(),
    }
}

impl Gateway {
    /// Waits for the audit journal to be indexed; returns how long it took
    /// and the cache's hit share since the previous call.
    async fn indexed(&self) -> After {
        let t = Instant::now();
        let v = self.verifier.as_ref().expect("running");
        while !v.audit_synced(Duration::from_secs(60)).await {}
        let indexed = t.elapsed();
        let now = v.cache_lookups();
        let before = std::mem::replace(&mut *self.lookups.lock().unwrap(), now);
        let (hits, misses) = (now.hits - before.hits, now.misses - before.misses);
        After {
            indexed,
            hits: hits as f64 / (hits + misses).max(1) as f64,
        }
    }

    async fn shutdown(mut self) {
        self.verifier = None;
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap();
        self.store.close().await;
    }
}

async fn channel(pki: &Pki, addr: std::net::SocketAddr) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(pki.file("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(pki.file("carrier-a.pem")).unwrap(),
            std::fs::read(pki.file("carrier-a.key")).unwrap(),
        ))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- scenarios

/// Throughput and latency of one scenario.
#[derive(Clone, Copy)]
struct Run {
    /// Requests (unary) or items (streams) per second.
    rate: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    /// CPU time of the PostgreSQL server per request or item over the run
    /// ([`pg_cpu_seconds`]): the database shares the machine's two cores.
    postgres_us: f64,
}

/// `pg_cpu` is the database's CPU seconds over the run.
fn run_of(mut lat: Vec<Duration>, items: usize, elapsed: Duration, pg_cpu: f64) -> Run {
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        rate: items as f64 / elapsed.as_secs_f64(),
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
        postgres_us: pg_cpu * 1e6 / items.max(1) as f64,
    }
}

async fn unary(
    who: &str,
    pki: &Pki,
    addr: std::net::SocketAddr,
    requests: Arc<Vec<pb::VerifyRequest>>,
    (connections, in_flight): (usize, usize),
    secs: u64,
) -> Run {
    // When each run begins, so that a profile can be lined up with it.
    tracing::info!(who, connections, in_flight, secs, "unary run");
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(channel(pki, addr).await);
    }
    let pg0 = pg_cpu_seconds();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    for ch in channels {
        for _ in 0..in_flight {
            let mut client = pb::verification_client::VerificationClient::new(ch.clone());
            let (requests, next) = (requests.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                while Instant::now() < until {
                    let i = next.fetch_add(1, Ordering::Relaxed) % requests.len();
                    let t = Instant::now();
                    client.verify(requests[i].clone()).await.expect("verify");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    let elapsed = started.elapsed();
    run_of(all, n, elapsed, pg_cpu_seconds() - pg0)
}

/// Streams `requests` through VerifyStream in batches of `batch`, with
/// [`STREAM_WINDOW`] batches in flight; latency is per batch.
async fn stream(
    pki: &Pki,
    addr: std::net::SocketAddr,
    requests: &[pb::VerifyRequest],
    batch: usize,
) -> Run {
    let batches: Vec<pb::VerifyBatch> = requests
        .chunks(batch)
        .enumerate()
        .map(|(i, c)| pb::VerifyBatch {
            batch_seq: i as u64 + 1,
            job_id: "loadgen".into(),
            requests: c.to_vec(),
        })
        .collect();
    let total = batches.len();
    let mut client = pb::verification_client::VerificationClient::new(channel(pki, addr).await)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::VerifyBatch>(STREAM_WINDOW);
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let window = Arc::new(tokio::sync::Semaphore::new(STREAM_WINDOW));
    let pg0 = pg_cpu_seconds();
    let started = Instant::now();
    let feeder = {
        let (sent_at, window) = (sent_at.clone(), window.clone());
        tokio::spawn(async move {
            for b in batches {
                window.acquire().await.unwrap().forget();
                sent_at.lock().unwrap().push(Instant::now());
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut results = client
        .verify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut lat = Vec::with_capacity(total);
    let mut items = 0;
    while let Some(r) = results.next().await {
        let r = r.expect("batch");
        items += r.results.len();
        let sent = sent_at.lock().unwrap()[r.batch_seq as usize - 1];
        lat.push(sent.elapsed());
        window.add_permits(1);
        if lat.len() == total {
            break;
        }
    }
    let elapsed = started.elapsed();
    let pg_cpu = pg_cpu_seconds() - pg0;
    feeder.await.unwrap();
    assert_eq!(items, requests.len());
    run_of(lat, items, elapsed, pg_cpu)
}

/// A `/proc/<pid>/stat` line's command name and its CPU times in seconds:
/// utime, stime, cutime and cstime (the 12th to 15th fields after the name,
/// which is in parentheses and may hold spaces).
fn stat_cpu(stat: &str) -> Option<(&str, [f64; 4])> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once('(')?.1;
    let mut f = rest.split(' ').skip(11).map(|v| v.parse::<f64>().ok());
    // USER_HZ: fixed at 100 by the Linux ABI whatever the kernel's tick.
    let mut next = || Some(f.next()?? / 100.0);
    Some((comm, [next()?, next()?, next()?, next()?]))
}

/// CPU seconds so far of this process (the server under test runs in it)
/// and of its children that have been waited for (the batch clients), from
/// `/proc/self/stat`.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    let (_, [user, system, child_user, child_system]) =
        stat_cpu(&stat).expect("a stat line with clock-tick counts");
    (user + system, child_user + child_system)
}

/// CPU seconds used so far by the running PostgreSQL server's processes
/// (every process named `postgres`): on this machine the database shares the
/// two cores with the gateway and the client.
fn pg_cpu_seconds() -> f64 {
    let mut seconds = 0.0;
    for entry in std::fs::read_dir("/proc").expect("/proc (Linux)").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // A process may end between listing and reading: it is skipped.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(("postgres", [user, system, ..])) = stat_cpu(&stat) {
            seconds += user + system;
        }
    }
    seconds
}

/// One `simverify batch run`: its rows/s, and CPU time per row of the
/// server and of the client while it ran. Machines of this kind vary in
/// speed hour to hour; CPU per row on both sides says which side a change
/// moved, and by how much, better than rows/s alone.
struct BatchRun {
    rows_per_s: f64,
    server_us_per_row: f64,
    client_us_per_row: f64,
    postgres_us_per_row: f64,
}

/// Runs the `simverify batch run` binary over `input`, as an operator
/// would: its own process and runtime beside the server's.
async fn batch_run(
    pki: &Pki,
    addr: std::net::SocketAddr,
    input: &Path,
    out: &Path,
    rows: u64,
) -> BatchRun {
    let argv: Vec<String> = vec![
        "batch".into(),
        "run".into(),
        "--quiet".into(),
        "--force".into(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        // The job an operator runs: its cleanup report is part of it.
        "--summary".into(),
        out.with_extension("summary.json").display().to_string(),
        "--server".into(),
        format!("https://localhost:{}", addr.port()),
        "--ca".into(),
        pki.file("ca.pem").display().to_string(),
        "--cert".into(),
        pki.file("carrier-a.pem").display().to_string(),
        "--key".into(),
        pki.file("carrier-a.key").display().to_string(),
    ];
    let cpu0 = cpu_seconds();
    let pg0 = pg_cpu_seconds();
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        // LOADGEN_SIMVERIFY runs another build of the client (an A/B of
        // client changes against one and the same server).
        let bin = std::env::var_os("LOADGEN_SIMVERIFY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_simverify").into());
        std::process::Command::new(bin)
            .args(&argv)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let elapsed = t.elapsed();
    let cpu1 = cpu_seconds();
    let pg1 = pg_cpu_seconds();
    assert!(
        out.status.success(),
        "batch run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_row = |s: f64| s * 1e6 / rows as f64;
    BatchRun {
        rows_per_s: rows as f64 / elapsed.as_secs_f64(),
        server_us_per_row: per_row(cpu1.0 - cpu0.0),
        client_us_per_row: per_row(cpu1.1 - cpu0.1),
        postgres_us_per_row: per_row(pg1 - pg0),
    }
}

fn read_requests(path: &Path, max: usize, purpose: pb::Purpose) -> Vec<pb::VerifyRequest> {
    let mut rdr = csv::Reader::from_path(path).unwrap();
    rdr.records()
        .take(max)
        .enumerate()
        .map(|(i, r)| {
            let r = r.unwrap();
            pb::VerifyRequest {
                request_id: format!("load-{i}"),
                msisdn: r[0].to_owned(),
                id_number: r[1].to_owned(),
                full_name: r[2].to_owned(),
                date_of_birth: r[3].to_owned(),
                sex: simverify::grpc::convert::sex_to_pb(simverify::domain::Sex::parse(&r[4]))
                    as i32,
                purpose: purpose as i32,
                consent_ref: None,
            }
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn fresh_pg(admin: &str, name: &str) -> String {
    let mut c = sqlx::PgConnection::connect(admin)
        .await
        .expect("PostgreSQL");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{name}")
}

/// Raw `COPY` of the imported mirror rows into an empty copy of the table
/// (same columns, key and index): what PostgreSQL itself takes to load
/// them, the ceiling of an import. Returns rows/s.
async fn raw_copy(url: &str) -> f64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut data = Vec::new();
    let mut out = c
        .copy_out_raw("COPY mirror_records TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    while let Some(chunk) = out.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    drop(out);
    sqlx::query("CREATE TABLE copy_ceiling (LIKE mirror_records INCLUDING ALL)")
        .execute(&mut c)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mirror_records")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let t = Instant::now();
    let mut tx = c.begin().await.unwrap();
    let mut copy = tx
        .copy_in_raw("COPY copy_ceiling FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    copy.finish().await.unwrap();
    tx.commit().await.unwrap();
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE copy_ceiling")
        .execute(&mut c)
        .await
        .unwrap();
    rate
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// RSS growth per entry of a cache filled with `n` distinct records of the
/// shape the mirror holds (a 3-token name on average).
fn cache_memory(n: u64) -> f64 {
    use simverify::cache::{CacheConfig, MirrorCache};
    // An eighth of `max_entries` is spare room that buckets borrow as they
    // grow in place (see `cache.rs`); this size gives moka itself room for
    // all `n`, so none is evicted, with the bucket count a cache of `n`
    // records gets.
    let cache = MirrorCache::new(CacheConfig {
        max_entries: n + n / 7,
        ..CacheConfig::default()
    });
    let before = rss();
    for i in 0..n {
        cache.insert(common::lookup_key(i), Some(&common::mirror_record(i)));
    }
    assert_eq!(cache.entry_count(), n);
    let grown = rss().saturating_sub(before);
    drop(cache);
    grown as f64 / n as f64
}

/// RSS growth per entry of a bare moka cache of the same capacity and key,
/// with an empty value: what one moka entry per record would cost before
/// any record is stored (why `MirrorCache` keeps buckets of records instead).
fn moka_floor(n: u64) -> f64 {
    let cache: moka::sync::Cache<[u8; 32], ()> = moka::sync::Cache::builder()
        .max_capacity(n)
        .time_to_live(Duration::from_secs(600))
        .build();
    let before = rss();
    for i in 0..n {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        cache.insert(key, ());
    }
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), n);
    let grown = rss().saturating_sub(before);
    drop(cache);
    grown as f64 / n as f64
}

struct Report {
    lines: Vec<String>,
}

/// Events logged at ERROR by anything in this process (the gateway runs
/// in it), counted by [`CountErrors`].
static ERRORS_LOGGED: AtomicUsize = AtomicUsize::new(0);

/// A log layer that only counts ERROR events.
struct CountErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            ERRORS_LOGGED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Report {
    fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("{s}");
        self.lines.push(s);
    }
}

async fn run(args: Args) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let people = args
        .people
        .unwrap_or(if args.quick { 50_000 } else { 2_000_000 });
    let rows = args
        .rows
        .unwrap_or(if args.quick { 50_000 } else { 1_000_000 });
    let secs = args.seconds.unwrap_or(if args.quick { 2 } else { 10 });
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 });
    let round_secs = args.round_seconds.unwrap_or(if args.quick { 2 } else { 4 });
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let work = Path::new(&target).join("loadgen");
    std::fs::create_dir_all(&work).unwrap();
    let today = simverify::domain::CivilDate {
        year: 2026,
        month: 1,
        day: 1,
    };
    let mut report = Report { lines: Vec::new() };

    // Cache memory first, while the process is small.
    if args.wants(&["memory"]) {
        let n = if args.quick { 200_000 } else { 1_000_000 };
        // Each in a fresh process: memory freed by one measurement stays in
        // the allocator and would be reused, unseen by RSS, by the next.
        let probe = |kind: &str| -> f64 {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--memory-probe", kind, &n.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "memory probe {kind} failed");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let per = probe("cache");
        let floor = probe("moka");
        report.line(format!(
            "cache memory: {per:.0} bytes per entry (RSS growth over {n} entries); one bare moka entry per record, empty value: {floor:.0} bytes per entry"
        ));
    }

    // Inputs, generated once per size.
    let pop = work.join(format!("population-{people}.csv"));
    if !pop.exists() {
        let f = std::io::BufWriter::new(std::fs::File::create(&pop).unwrap());
        simverify::r#gen::write_population(
            &simverify::r#gen::PopulationConfig::new(people, 1, today),
            f,
        )
        .unwrap();
    }
    let subs = work.join(format!("subscribers-{people}-{rows}.csv"));
    if !subs.exists() {
        let cfg = simverify::r#gen::SubscriberConfig {
            count: Some(rows),
            ..simverify::r#gen::SubscriberConfig::new(1, today)
        };
        let f = std::io::BufWriter::new(std::fs::File::create(&subs).unwrap());
        simverify::r#gen::write_subscribers(
            std::io::BufReader::new(std::fs::File::open(&pop).unwrap()),
            &cfg,
            f,
        )
        .unwrap();
    }
    let rows = csv::Reader::from_path(&subs).unwrap().records().count() as u64;
    let pki_dir = work.join("pki");
    simverify::pki::init(&pki_dir, simverify::clock::today_vn(), true).unwrap();
    let pki = Pki { dir: pki_dir };
    let hasher = simverify::domain::KeyedHasher::new(&[0x5a; 32], 1).unwrap();
    report.line(format!(
        "machine: {} cores; people {people}, subscriber rows {rows}, unary runs of {secs} s, stream window {STREAM_WINDOW}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));

    // Fresh databases, filled by the import (timed).
    let sqlite_path = work.join("bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_path.display()));
    }
    let sqlite_url = format!("sqlite://{}", sqlite_path.display());
    let pg_url = fresh_pg(&args.pg, "simverify_loadgen").await;
    // A backend's database is filled only when some scenario needs it: at the
    // full scale the SQLite import alone takes minutes.
    let uses = |tag: &str| {
        ["import", "batch", "stream", "unary"]
            .iter()
            .any(|s| args.wants(&[tag, s]))
            || args.wants(&[tag, "unary", "rounds"])
    };
    let mut imports: Vec<(String, f64)> = Vec::new();
    let mut pg_import = None;
    // A first import: PostgreSQL takes it through COPY, SQLite through its
    // multi-row upsert (see `Store::begin_bulk_insert`).
    for (name, tag, url, how) in [
        ("SQLite", "sqlite", &sqlite_url, "upsert"),
        ("PostgreSQL", "postgres", &pg_url, "COPY"),
    ] {
        if !uses(tag) {
            continue;
        }
        let store = Store::connect(url).await.unwrap();
        let t = Instant::now();
        let r = simverify::mirror::import_csv(
            &store,
            &hasher,
            std::fs::File::open(&pop).unwrap(),
            "bench",
            |_| {},
        )
        .await
        .unwrap();
        let rate = r.rows_read as f64 / t.elapsed().as_secs_f64();
        if tag == "postgres" {
            pg_import = Some(rate);
        }
        if args.wants(&["import", tag]) {
            imports.push((
                format!("import into {name} (parse, normalise, hash, {how})"),
                rate,
            ));
        }
        store.close().await;
    }
    let raw = if args.wants(&["import", "postgres"]) {
        let r = raw_copy(&pg_url).await;
        imports.push(("raw COPY of the same rows into PostgreSQL".into(), r));
        Some(r)
    } else {
        None
    };
    if !imports.is_empty() {
        report.line(String::new());
        report.line(format!("| mirror import, {people} people | rows/s |"));
        report.line("|---|---:|");
        for (n, r) in &imports {
            report.line(format!("| {n} | {r:.0} |"));
        }
        if let (Some(i), Some(c)) = (pg_import, raw) {
            report.line(format!("| import / raw COPY (PostgreSQL) | {:.2} |", i / c));
        }
    }

    let unary_requests = Arc::new(read_requests(&subs, 200_000, pb::Purpose::Activation));
    let stream_requests = read_requests(&subs, rows as usize, pb::Purpose::Cleanup);
    let (echo_addr, echo_stop) = spawn_echo(&pki, false).await;
    let out = work.join("results.csv");

    // Rows: (scenario, backend label, Run, indexed-after).
    // Unary rows carry the echo runs just before and after a gateway run.
    type Bracket = Option<(Run, Run)>;
    let mut unary_rows: Vec<(String, String, Run, Bracket)> = Vec::new();
    let mut round_rows: Vec<(String, Vec<Round>)> = Vec::new();
    let mut stream_rows: Vec<(String, String, Run, Option<After>)> = Vec::new();
    let mut batch_rows: Vec<(String, BatchRun, Option<After>)> = Vec::new();

    if args.wants(&["echo", "unary"]) {
        for shape in UNARY_SHAPES {
            let r = unary("echo", &pki, echo_addr, unary_requests.clone(), shape, secs).await;
            unary_rows.push((shape_name(shape), ECHO.into(), r, None));
        }
    }
    if args.wants(&["echo", "held", "unary"]) {
        let (held_addr, held_stop) = spawn_echo(&pki, true).await;
        for shape in UNARY_SHAPES {
            let r = unary(
                "held echo",
                &pki,
                held_addr,
                unary_requests.clone(),
                shape,
                secs,
            )
            .await;
            unary_rows.push((shape_name(shape), HELD_ECHO.into(), r, None));
        }
        let _ = held_stop.send(());
    }
    if args.wants(&["echo", "stream"]) {
        for &b in &args.stream_batches {
            let r = stream(&pki, echo_addr, &stream_requests, b).await;
            stream_rows.push((format!("batch {b}"), ECHO.into(), r, None));
        }
    }
    if args.wants(&["echo", "batch"]) {
        let r = batch_run(&pki, echo_addr, &subs, &out, rows).await;
        batch_rows.push((ECHO.into(), r, None));
    }

    for (name, tag, url) in [
        ("SQLite", "sqlite", &sqlite_url),
        ("PostgreSQL", "postgres", &pg_url),
    ] {
        let journal = work.join(format!("journal-{tag}"));
        if args.wants(&[tag, "batch"]) {
            let gw = spawn_gateway(&pki, url, &hasher, &journal).await;
            let cold = batch_run(&pki, gw.addr, &subs, &out, rows).await;
            let cold_ix = gw.indexed().await;
            let warm = batch_run(&pki, gw.addr, &subs, &out, rows).await;
            let warm_ix = gw.indexed().await;
            batch_rows.push((format!("gateway, {name}, cache cold"), cold, Some(cold_ix)));
            batch_rows.push((format!("gateway, {name}, cache warm"), warm, Some(warm_ix)));
            gw.shutdown().await;
        }
        let cold = args.wants(&[tag, "stream", "cold"]);
        let warm = args.wants(&[tag, "stream", "warm"]);
        if cold || warm {
            let gw = spawn_gateway(&pki, url, &hasher, &journal).await;
            // The cold pass also warms the cache for the warm ones.
            let first = stream(&pki, gw.addr, &stream_requests, 1000).await;
            let ix = gw.indexed().await;
            if cold {
                stream_rows.push((
                    "batch 1000".into(),
                    format!("gateway, {name}, cache cold"),
                    first,
                    Some(ix),
                ));
            }
            for &b in args.stream_batches.iter().filter(|_| warm) {
                let r = stream(&pki, gw.addr, &stream_requests, b).await;
                let ix = gw.indexed().await;
                stream_rows.push((
                    format!("batch {b}"),
                    format!("gateway, {name}, cache warm"),
                    r,
                    Some(ix),
                ));
            }
            gw.shutdown().await;
        }
        let alternating = rounds > 0 && args.wants(&[tag, "unary", "rounds"]);
        if args.wants(&[tag, "unary"]) || alternating {
            let gw = spawn_gateway(&pki, url, &hasher, &journal).await;
            // Warm the cache with the requests the runs draw from.
            let _ = stream(&pki, gw.addr, &unary_requests, 1000).await;
            gw.indexed().await;
            for shape in UNARY_SHAPES
                .into_iter()
                .filter(|_| args.wants(&[tag, "unary"]))
            {
                // The echo again just before and just after, same shape: the
                // machine's speed drifts over a full run, so the ratio is
                // taken against the echo bracketing this very run.
                let before =
                    unary("echo", &pki, echo_addr, unary_requests.clone(), shape, secs).await;
                let r = unary(name, &pki, gw.addr, unary_requests.clone(), shape, secs).await;
                // Indexing first, so that it does not slow the echo down.
                gw.indexed().await;
                let after =
                    unary("echo", &pki, echo_addr, unary_requests.clone(), shape, secs).await;
                unary_rows.push((
                    shape_name(shape),
                    format!("gateway, {name}, cache warm"),
                    r,
                    Some((before, after)),
                ));
            }
            if alternating {
                let shape = UNARY_TARGET_SHAPE;
                let requests = &unary_requests;
                let mut before =
                    unary("echo", &pki, echo_addr, requests.clone(), shape, round_secs).await;
                let mut these = Vec::new();
                for _ in 0..rounds {
                    let r = unary(name, &pki, gw.addr, requests.clone(), shape, round_secs).await;
                    gw.indexed().await;
                    let after =
                        unary("echo", &pki, echo_addr, requests.clone(), shape, round_secs).await;
                    these.push(Round::of(&before, &r, &after));
                    before = after;
                }
                round_rows.push((name.to_owned(), these));
            }
            gw.shutdown().await;
        }
    }
    let _ = echo_stop.send(());

    if !unary_rows.is_empty() {
        report.line(String::new());
        report.line("| unary Verify (mTLS, durable audit) | in flight | req/s | echo alongside req/s | ratio to echo | p50 ms | p99 ms | p99.9 ms | echo alongside p99 ms | p99 ratio | PostgreSQL CPU µs/req |");
        report.line("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (shape, who, r, alongside) in &unary_rows {
            // The mean of the echo runs bracketing this one; the echo's
            // rows and the held echo's (both run first, one after the
            // other) refer to the echo's.
            let reference = match alongside {
                Some((a, b)) => Some((
                    (a.rate + b.rate) / 2.0,
                    (a.p99.as_secs_f64() + b.p99.as_secs_f64()) / 2.0,
                )),
                None => unary_rows
                    .iter()
                    .find(|(s, w, _, _)| s == shape && w == ECHO)
                    .map(|(_, _, e, _)| (e.rate, e.p99.as_secs_f64())),
            };
            // No echo run to refer to (e.g. `--only held`): no ratios.
            let [echo_rate, ratio, echo_p99, p99_ratio] = reference.map_or(
                ["–".to_owned(), "–".into(), "–".into(), "–".into()],
                |(rate, p99)| {
                    [
                        format!("{rate:.0}"),
                        format!("{:.2}", r.rate / rate),
                        format!("{:.2}", p99 * 1000.0),
                        format!("{:.2}", r.p99.as_secs_f64() / p99),
                    ]
                },
            );
            let mark = if shape_name(UNARY_TARGET_SHAPE) == *shape {
                " *"
            } else {
                ""
            };
            report.line(format!(
                "| {who} | {shape}{mark} | {:.0} | {echo_rate} | {ratio} | {} | {} | {} | {echo_p99} | {p99_ratio} | {:.2} |",
                r.rate,
                ms(r.p50),
                ms(r.p99),
                ms(r.p999),
                r.postgres_us,
            ));
        }
    }
    if !round_rows.is_empty() {
        report.line(String::new());
        report.line(format!(
            "| unary Verify {}, alternating rounds of {round_secs} s | round | req/s | echo alongside req/s | ratio to echo | p99 ms | echo alongside p99 ms | p99 ratio |",
            shape_name(UNARY_TARGET_SHAPE)
        ));
        report.line("|---|---|---:|---:|---:|---:|---:|---:|");
        for (name, these) in &round_rows {
            for (i, r) in these.iter().enumerate() {
                report.line(format!(
                    "| gateway, {name}, cache warm | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    i + 1,
                    r.rate,
                    r.echo_rate,
                    r.ratio(),
                    r.p99_ms,
                    r.echo_p99_ms,
                    r.p99_ratio()
                ));
            }
            let (ratio, lo, hi) = median_range(these.iter().map(Round::ratio));
            let (p99, p99_lo, p99_hi) = median_range(these.iter().map(Round::p99_ratio));
            report.line(format!(
                "| gateway, {name}: **median of {} rounds** (min–max) | – | – | – | **{ratio:.2}** ({lo:.2}–{hi:.2}) | – | – | **{p99:.2}** ({p99_lo:.2}–{p99_hi:.2}) |",
                these.len()
            ));
        }
    }
    if !stream_rows.is_empty() {
        report.line(String::new());
        report.line(format!(
            "| VerifyStream over {rows} rows (mTLS, durable audit) | batch | items/s | ratio to echo | batch p50 ms | batch p99 ms | PostgreSQL CPU µs/item | indexed after s | cache hits % |"
        ));
        report.line("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for (batch, who, r, ix) in &stream_rows {
            let echo = stream_rows
                .iter()
                .find(|(b, w, _, _)| b == batch && w == ECHO);
            let ratio = echo.map_or("–".into(), |(_, _, e, _)| {
                format!("{:.2}", r.rate / e.rate)
            });
            report.line(format!(
                "| {who} | {batch} | {:.0} | {ratio} | {} | {} | {:.2} | {} |",
                r.rate,
                ms(r.p50),
                ms(r.p99),
                r.postgres_us,
                After::cells(ix)
            ));
        }
    }
    if !batch_rows.is_empty() {
        report.line(String::new());
        report.line(format!(
            "| `simverify batch run` over {rows} rows | rows/s | ratio to echo | server CPU µs/row | client CPU µs/row | PostgreSQL CPU µs/row | indexed after s | cache hits % |"
        ));
        report.line("|---|---:|---:|---:|---:|---:|---:|---:|");
        let echo = batch_rows
            .iter()
            .find(|(w, _, _)| w == ECHO)
            .map(|b| b.1.rows_per_s);
        for (who, r, ix) in &batch_rows {
            report.line(format!(
                "| {who} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} |",
                r.rows_per_s,
                echo.map_or("–".into(), |e| format!("{:.2}", r.rows_per_s / e)),
                r.server_us_per_row,
                r.client_us_per_row,
                r.postgres_us_per_row,
                After::cells(ix)
            ));
        }
    }
    // A failure the gateway retries (a store error, the journal reader's
    // 'impossible length' that the fill-ahead brought) leaves the figures
    // plausible; the count says whether they were measured on a healthy run.
    let errors = ERRORS_LOGGED.load(Ordering::Relaxed);
    report.line(String::new());
    report.line(format!("errors logged during the run: {errors}"));
    std::fs::write(work.join("report.md"), report.lines.join("\n") + "\n").unwrap();
}

/// One alternating round: a gateway run against the echo runs on either
/// side of it.
struct Round {
    rate: f64,
    echo_rate: f64,
    p99_ms: f64,
    echo_p99_ms: f64,
}

impl Round {
    fn of(before: &Run, r: &Run, after: &Run) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Self {
            rate: r.rate,
            echo_rate: (before.rate + after.rate) / 2.0,
            p99_ms: ms(r.p99),
            echo_p99_ms: (ms(before.p99) + ms(after.p99)) / 2.0,
        }
    }

    fn ratio(&self) -> f64 {
        self.rate / self.echo_rate
    }

    fn p99_ratio(&self) -> f64 {
        self.p99_ms / self.echo_p99_ms
    }
}

/// The median, minimum and maximum (of a non-empty sequence).
fn median_range(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn shape_name((c, f): (usize, usize)) -> String {
    format!("{c}×{f}")
}

fn main() {
    let args = Args::parse();
    // The gateway logs as `simverify serve` does: a subscriber at `info`
    // decides, for every span and event on the hot path, whether to build it.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(CountErrors)
        .init();
    if let [kind, n] = args.memory_probe.as_slice() {
        let n: u64 = n.parse().unwrap();
        let per = match kind.as_str() {
            "cache" => cache_memory(n),
            "moka" => moka_floor(n),
            other => panic!("unknown memory probe {other}"),
        };
        println!("{per}");
        return;
    }
    // Clients and servers share one runtime with the default worker count,
    // the same for the echo and the gateway.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}
