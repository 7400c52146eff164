//! `simverify serve`: run the gateway.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

use super::CliError;
use crate::cache::CacheConfig;
use crate::clock;
use crate::config::Config;
use crate::domain::CivilDate;
use crate::r#gen::{PopulationConfig, SubscriberConfig, write_population, write_subscribers};
use crate::grpc::{Application, ServeError, ServerConfig};
use crate::mirror;
use crate::pki::DevPki;
use crate::verifier::{Verifier, VerifierConfig};

/// Demo data is generated relative to a fixed date, so the same seed gives
/// the same people on every machine and every day (the README relies on it).
pub const DEMO_REFERENCE_DATE: CivilDate = CivilDate {
    year: 2026,
    month: 1,
    day: 1,
};
pub const DEMO_SEED: u64 = 2026;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve without TLS; every caller is the development carrier. Only
    /// allowed on a loopback address.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Demo mode: use (or create) development certificates in DATA_DIR/pki
    /// when none are configured, and when the mirror is empty fill it with a
    /// synthetic population (also written to DATA_DIR/demo-population.csv,
    /// with a matching DATA_DIR/demo-subscribers.csv).
    #[arg(long)]
    pub demo: bool,
    /// Export traces (a span per call, joined to the caller's W3C
    /// `traceparent`) to this OpenTelemetry collector over OTLP/gRPC, e.g.
    /// `http://127.0.0.1:4317`. Spans hold method, caller, status and timing only.
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and
    /// `OTEL_TRACES_SAMPLER` apply [default: no export].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// People in the demo population.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub demo_size: u64,
}

pub async fn run(mut cfg: Config, args: ServeArgs) -> Result<(), CliError> {
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    cfg.server.insecure_plaintext |= args.insecure_plaintext;
    if args.demo && !cfg.server.insecure_plaintext && cfg.tls.is_none() {
        let pki = DevPki::at(&cfg.pki_dir());
        if !pki.exists() {
            crate::pki::init(&pki.dir, clock::today_vn(), false)
                .map_err(|e| CliError::Internal(e.to_string()))?;
            tracing::info!(dir = %pki.dir.display(), "created development certificates");
        }
        cfg.tls = Some(pki.tls.clone());
        if cfg.principals.is_empty() {
            cfg.principals = pki.principals.clone();
        }
    }
    cfg.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    let (key_path, create) = cfg.audit_signing_key();
    let signer = crate::audit::log::Signer::load_or_create(&key_path, create)
        .map_err(|e| CliError::Usage(format!("configuration: audit_signing_key_file: {e}")))?;
    let mut server = ServerConfig::from_config(&cfg, std::sync::Arc::new(signer))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    // `main` set up the export from the same flag.
    server.rpc_spans = args.otlp_endpoint.is_some();

    let hasher = super::hasher(&cfg)?;
    let store = super::open_store(&cfg).await?;
    store
        .check_key(hasher.key_id(), &hasher.fingerprint())
        .await?;
    if args.demo && store.record_count().await? == 0 {
        seed_demo(&cfg, &store, &hasher, args.demo_size).await?;
    }
    let vcfg = VerifierConfig {
        cache: CacheConfig {
            max_entries: cfg.server.cache_entries,
            ..CacheConfig::default()
        },
        ..VerifierConfig::new(cfg.audit_commit_mode())
    };
    let (verifier, tasks) = Verifier::start(hasher, store.clone(), vcfg).await?;
    let app = Application::build(server, verifier, tasks)
        .await
        .map_err(|e| match e {
            ServeError::Tls(_) | ServeError::NoTls | ServeError::NotLoopback(_) => {
                CliError::Usage(e.to_string())
            }
            e => CliError::Unavailable(e.to_string()),
        })?;
    if cfg.server.insecure_plaintext {
        tracing::warn!(
            "serving plaintext gRPC without client authentication: for local development only"
        );
    }
    let stop = shutdown_signal();
    tracing::info!(
        addr = %app.local_addr(),
        backend = store.backend(),
        database = %cfg.redacted_database_url(),
        records = store.record_count().await?,
        mirror_version = store.mirror_version().await?,
        "simverify gateway ready"
    );
    app.run_until_stopped(stop)
        .await
        .map_err(|e| CliError::Internal(e.to_string()))?;
    store.close().await;
    Ok(())
}

async fn seed_demo(
    cfg: &Config,
    store: &crate::store::Store,
    hasher: &crate::domain::KeyedHasher,
    size: u64,
) -> Result<(), CliError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| CliError::Internal(e.to_string()))?;
    let population = dir.join("demo-population.csv");
    let subscribers = dir.join("demo-subscribers.csv");
    tracing::info!(people = size, path = %population.display(), "generating demo population");
    write_file(&population, |f| {
        write_population(
            &PopulationConfig::new(size, DEMO_SEED, DEMO_REFERENCE_DATE),
            f,
        )
        .map(|_| ())
    })?;
    write_file(&subscribers, |f| {
        let pop = std::fs::File::open(&population)?;
        write_subscribers(
            pop,
            &SubscriberConfig::new(DEMO_SEED, DEMO_REFERENCE_DATE),
            f,
        )
        .map(|_| ())
    })?;
    let file = std::fs::File::open(&population).map_err(|e| CliError::Internal(e.to_string()))?;
    let report = mirror::import_csv(store, hasher, file, "demo", |_| {})
        .await
        .map_err(|e| CliError::Internal(e.to_string()))?;
    tracing::info!(
        imported = report.changed,
        mirror_version = report.version,
        subscribers = %subscribers.display(),
        "demo population imported"
    );
    Ok(())
}

fn write_file(
    path: &Path,
    f: impl FnOnce(std::io::BufWriter<std::fs::File>) -> Result<(), crate::r#gen::GenError>,
) -> Result<(), CliError> {
    let file = std::fs::File::create(path)
        .map_err(|e| CliError::Internal(format!("cannot create {}: {e}", path.display())))?;
    f(std::io::BufWriter::new(file)).map_err(|e| CliError::Internal(e.to_string()))
}

/// Resolves on Ctrl-C or SIGTERM, then logs that shutdown began.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let signal = shutdown_signal_quiet();
    async move {
        signal.await;
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// Resolves on Ctrl-C or SIGTERM, silently. The handlers are installed by
/// this call, not when the future is first polled: until they are, SIGTERM
/// still kills the process outright, so a signal sent as soon as the caller
/// has announced itself (a supervisor, a test) would skip the drain.
pub fn shutdown_signal_quiet() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn recv(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let install = |kind: SignalKind, name: &str| {
            signal(kind)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, signal = name, "cannot listen for the signal; it will not stop the process cleanly");
                })
                .ok()
        };
        let interrupt = install(SignalKind::interrupt(), "SIGINT");
        let terminate = install(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = recv(interrupt) => {},
                () = recv(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
