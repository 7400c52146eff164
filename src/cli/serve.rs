//! `simverify serve`: run the gateway.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

use super::{CliError, Common};
use crate::cache::CacheConfig;
use crate::domain::CivilDate;
use crate::r#gen::{PopulationConfig, SubscriberConfig, write_population, write_subscribers};
use crate::grpc::{Application, ServeError, ServerConfig};
use crate::mirror;
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
    /// Address to listen on. Plaintext, so loopback addresses only.
    #[arg(long, env = "SIMVERIFY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// When the mirror is empty, fill it with a synthetic demo population
    /// (also written to DATA_DIR/demo-population.csv, with a matching
    /// DATA_DIR/demo-subscribers.csv).
    #[arg(long)]
    pub demo: bool,
    /// People in the demo population.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub demo_size: u64,
    /// Most requests per VerifyStream message.
    #[arg(long, env = "SIMVERIFY_MAX_BATCH_ITEMS", default_value_t = 5000)]
    pub max_batch_items: usize,
    /// Most mirror records kept in the in-memory cache.
    #[arg(long, env = "SIMVERIFY_CACHE_ENTRIES", default_value_t = 1_000_000)]
    pub cache_entries: u64,
}

pub async fn run(common: &Common, args: ServeArgs) -> Result<(), CliError> {
    if !args.listen.ip().is_loopback() {
        return Err(CliError::Usage(
            ServeError::NotLoopback(args.listen).to_string(),
        ));
    }
    let hasher = common.hasher()?;
    let store = common.open_store().await?;
    store
        .check_key(hasher.key_id(), &hasher.fingerprint())
        .await?;
    if args.demo && store.record_count().await? == 0 {
        seed_demo(common, &store, &hasher, args.demo_size).await?;
    }
    let cfg = VerifierConfig {
        cache: CacheConfig {
            max_entries: args.cache_entries,
            ..CacheConfig::default()
        },
        ..VerifierConfig::default()
    };
    let (verifier, tasks) = Verifier::start(hasher, store.clone(), cfg).await?;
    let server = ServerConfig {
        listen: args.listen,
        max_batch_items: args.max_batch_items,
        ..ServerConfig::default()
    };
    let app = Application::build(server, verifier, tasks)
        .await
        .map_err(|e| CliError::Unavailable(e.to_string()))?;
    tracing::warn!("serving plaintext gRPC: for local use only");
    tracing::info!(
        addr = %app.local_addr(),
        backend = store.backend(),
        records = store.record_count().await?,
        mirror_version = store.mirror_version().await?,
        "simverify gateway ready"
    );
    app.run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| CliError::Internal(e.to_string()))?;
    store.close().await;
    Ok(())
}

async fn seed_demo(
    common: &Common,
    store: &crate::store::Store,
    hasher: &crate::domain::KeyedHasher,
    size: u64,
) -> Result<(), CliError> {
    let dir = &common.data_dir;
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
