//! Load generator: the gateway and a bare tonic echo server of the same
//! contract, driven by the same client with the same settings in one run, so
//! the gateway's cost can be quoted as a ratio of the transport's.
//!
//! `cargo bench --bench loadgen -- [--quick] [--people N] [--rows N]
//!  [--seconds S] [--pg postgres://postgres@127.0.0.1:5432/postgres]`
//!
//! Scenarios (mutual TLS and durable audit always on):
//! - mirror import into SQLite and PostgreSQL;
//! - unary Verify, cache warm, 4 connections × 64 in flight: echo, SQLite, PostgreSQL;
//! - `simverify batch run` over the subscriber file (VerifyStream): echo;
//!   cache cold and warm on SQLite; cache cold and warm on PostgreSQL.

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
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg: String,
    /// Batch size of VerifyStream messages.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 64;

// ---------------------------------------------------------------- echo

#[derive(Clone)]
struct Echo;

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

async fn spawn_echo(pki: &Pki) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
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
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .tcp_nodelay(true)
        .add_service(
            pb::verification_server::VerificationServer::new(Echo)
                .max_decoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = rx.await;
            },
        );
    tokio::spawn(server);
    (addr, tx)
}

struct Gateway {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), simverify::grpc::ServeError>>,
    store: Store,
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
    let (verifier, tasks) =
        Verifier::start(hasher.clone(), store.clone(), VerifierConfig::new(mode))
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
        security: Security::MutualTls { tls, principals },
        ..ServerConfig::plaintext("127.0.0.1:0".parse().unwrap(), std::sync::Arc::new(signer))
    };
    let app = Application::build(cfg, verifier, tasks).await.unwrap();
    let addr = app.local_addr();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Gateway {
        addr,
        stop,
        done,
        store,
    }
}

impl Gateway {
    async fn shutdown(self) {
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

struct Unary {
    rps: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

async fn unary(
    pki: &Pki,
    addr: std::net::SocketAddr,
    requests: Arc<Vec<pb::VerifyRequest>>,
    secs: u64,
) -> Unary {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    for _ in 0..CONNECTIONS {
        let ch = channel(pki, addr).await;
        for _ in 0..IN_FLIGHT_PER_CONNECTION {
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
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Unary {
        rps: all.len() as f64 / elapsed,
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
    }
}

/// Runs `simverify batch run` in-process over `input`; returns rows/s.
async fn batch_run(
    pki: &Pki,
    addr: std::net::SocketAddr,
    input: &Path,
    out: &Path,
    batch_size: usize,
    rows: u64,
) -> f64 {
    let argv: Vec<String> = vec![
        "simverify".into(),
        "batch".into(),
        "run".into(),
        "--quiet".into(),
        "--force".into(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--batch-size".into(),
        batch_size.to_string(),
        "--server".into(),
        format!("https://localhost:{}", addr.port()),
        "--ca".into(),
        pki.file("ca.pem").display().to_string(),
        "--cert".into(),
        pki.file("carrier-a.pem").display().to_string(),
        "--key".into(),
        pki.file("carrier-a.key").display().to_string(),
    ];
    let cli = simverify::cli::Cli::try_parse_from(argv).unwrap();
    let t = Instant::now();
    simverify::cli::run(cli).await.expect("batch run");
    rows as f64 / t.elapsed().as_secs_f64()
}

fn read_requests(path: &Path, max: usize) -> Vec<pb::VerifyRequest> {
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
                purpose: pb::Purpose::Activation as i32,
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

async fn run(args: Args) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let people = args
        .people
        .unwrap_or(if args.quick { 50_000 } else { 2_000_000 });
    let rows = args
        .rows
        .unwrap_or(if args.quick { 50_000 } else { 1_000_000 });
    let secs = args.seconds.unwrap_or(if args.quick { 2 } else { 10 });
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let work = Path::new(&target).join("loadgen");
    std::fs::create_dir_all(&work).unwrap();
    let today = simverify::domain::CivilDate {
        year: 2026,
        month: 1,
        day: 1,
    };

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

    let mut report = Vec::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push(s);
    };
    line(format!(
        "machine: {} cores; people {people}, subscriber rows {rows}, unary {CONNECTIONS}×{IN_FLIGHT_PER_CONNECTION} in flight for {secs} s, stream batch {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.batch_size
    ));

    // Imports.
    let sqlite_path = work.join("bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_path.display()));
    }
    let sqlite_url = format!("sqlite://{}", sqlite_path.display());
    let pg_url = fresh_pg(&args.pg, "simverify_loadgen").await;
    let mut import_rate = Vec::new();
    for (name, url) in [("SQLite", &sqlite_url), ("PostgreSQL", &pg_url)] {
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
        import_rate.push((name, rate));
        store.close().await;
    }

    let requests = Arc::new(read_requests(&subs, 200_000));
    let (echo_addr, echo_stop) = spawn_echo(&pki).await;
    let out = work.join("results.csv");

    let echo_unary = unary(&pki, echo_addr, requests.clone(), secs).await;
    let echo_stream = batch_run(&pki, echo_addr, &subs, &out, args.batch_size, rows).await;

    let mut unary_rows = vec![("bare tonic echo".to_owned(), echo_unary)];
    let mut stream_rows = vec![("bare tonic echo".to_owned(), echo_stream)];
    for (name, url) in [("SQLite", &sqlite_url), ("PostgreSQL", &pg_url)] {
        let gw = spawn_gateway(&pki, url, &hasher, &work.join(format!("journal-{name}"))).await;
        let cold = batch_run(&pki, gw.addr, &subs, &out, args.batch_size, rows).await;
        let warm = batch_run(&pki, gw.addr, &subs, &out, args.batch_size, rows).await;
        let u = unary(&pki, gw.addr, requests.clone(), secs).await;
        stream_rows.push((format!("gateway, {name}, cache cold"), cold));
        stream_rows.push((format!("gateway, {name}, cache warm"), warm));
        unary_rows.push((format!("gateway, {name}, cache warm"), u));
        gw.shutdown().await;
    }
    let _ = echo_stop.send(());

    line(String::new());
    line("| unary Verify (mTLS, durable audit) | req/s | ratio to echo | p50 ms | p99 ms | p99.9 ms | p99 ratio |".into());
    line("|---|---:|---:|---:|---:|---:|---:|".into());
    let (e_rps, e_p99) = (unary_rows[0].1.rps, unary_rows[0].1.p99);
    for (n, u) in &unary_rows {
        line(format!(
            "| {n} | {:.0} | {:.2} | {} | {} | {} | {:.2} |",
            u.rps,
            u.rps / e_rps,
            ms(u.p50),
            ms(u.p99),
            ms(u.p999),
            u.p99.as_secs_f64() / e_p99.as_secs_f64()
        ));
    }
    line(String::new());
    line(format!(
        "| `batch run` over VerifyStream, {rows} rows | rows/s | ratio to echo |"
    ));
    line("|---|---:|---:|".into());
    let e = stream_rows[0].1;
    for (n, r) in &stream_rows {
        line(format!("| {n} | {r:.0} | {:.2} |", r / e));
    }
    line(String::new());
    line(format!("| mirror import, {people} people | rows/s |"));
    line("|---|---:|".into());
    for (n, r) in &import_rate {
        line(format!("| {n} | {r:.0} |"));
    }
    std::fs::write(work.join("report.md"), report.join("\n")).unwrap();
}

fn main() {
    let args = Args::parse();
    // Client and servers share one runtime with the default worker count, the
    // same for the echo and the gateway.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}
