//! The `simverify` command line. Each subcommand validates its arguments into
//! typed values before doing any work; `main` maps [`CliError`] to exit codes.

mod audit;
pub mod batch;
mod client;
mod r#gen;
mod mirror;
mod pki;
mod serve;
mod verify;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretBox};

use crate::config::Config;
use crate::domain::KeyedHasher;
use crate::store::{Store, StoreError};

/// Exit codes (sysexits.h): usage/configuration problems, bad input data,
/// unavailable service, internal software error.
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_DATA: u8 = 65;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_SOFTWARE: u8 = 70;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or configuration: nothing was started.
    #[error("{0}")]
    Usage(String),
    /// The input data was refused.
    #[error("{0}")]
    Data(String),
    /// The gateway or database could not be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// Whoever read the output closed the pipe early (`… | head`): they have
    /// what they wanted, so the command ends quietly with success.
    #[error("the output's reader closed the pipe")]
    ClosedPipe,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Data(_) => EXIT_DATA,
            Self::Unavailable(_) => EXIT_UNAVAILABLE,
            Self::Internal(_) => EXIT_SOFTWARE,
            Self::ClosedPipe => 0,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyMismatch { .. } | StoreError::BadUrl => {
                Self::Usage(format!("configuration: {e}"))
            }
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => {
                Self::Unavailable(format!("cannot reach the database: {e}"))
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<crate::verifier::StartError> for CliError {
    fn from(e: crate::verifier::StartError) -> Self {
        match e {
            crate::verifier::StartError::Store(e) => e.into(),
            crate::verifier::StartError::Journal(crate::audit::JournalError::Store(e)) => e.into(),
            // A journal that is locked, damaged or belongs to another
            // database needs the operator: nothing was started.
            crate::verifier::StartError::Journal(e) => Self::Usage(e.to_string()),
        }
    }
}

/// simverify — verify mobile subscribers against a keyed-hash mirror of the
/// National Population Database.
///
/// Quick start: `simverify serve --demo` starts a gateway on localhost:50051
/// over mutual TLS, with development certificates and a synthetic demo
/// population in ./simverify-data; `simverify verify --help` shows how to
/// query it.
#[derive(Debug, Parser)]
#[command(name = "simverify", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command. Configuration comes from the `--config`
/// file, then `SIMVERIFY__SECTION__KEY` environment variables (for example
/// `SIMVERIFY__SERVER__LISTEN=127.0.0.1:6000`), then these flags.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Configuration file (TOML). `simverify pki init` writes a starting one.
    #[arg(long, global = true, env = "SIMVERIFY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded database, the generated hash key and the
    /// development PKI [default: simverify-data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database: `sqlite://PATH` or `postgres://USER@HOST/DB`
    /// [default: DATA_DIR/simverify.db].
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// File holding the secret HMAC key in hex, at least 32 bytes
    /// [default: DATA_DIR/hash.key, created with a random key when missing].
    #[arg(long, global = true)]
    pub hash_key_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `simverify=debug` [default: info].
    #[arg(long, global = true)]
    pub log: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Verify one subscriber against a running gateway.
    Verify(verify::VerifyArgs),
    /// Manage the population mirror.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Generate synthetic data for demos, tests and benchmarks.
    #[command(subcommand)]
    Gen(r#gen::GenCommand),
    /// Read the audit log (as an auditor, or as a carrier for its own records).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// SIM-cleanup jobs: verify a whole subscriber file, resumably.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Development certificates for mutual TLS.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Check a configuration without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration (file, environment, flags); print
    /// a summary without secrets. Exits 64 on the first problem.
    Check,
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let cfg = cli.common.load()?;
    match cli.command {
        Command::Serve(a) => serve::run(cfg, a).await,
        Command::Verify(a) => verify::run(&cfg, a).await,
        Command::Mirror(c) => mirror::run(&cfg, c).await,
        Command::Gen(c) => r#gen::run(c),
        Command::Pki(c) => pki::run(&cfg, c),
        Command::Batch(c) => batch::run(&cfg, c).await,
        Command::Audit(c) => audit::run(&cfg, c).await,
        Command::Config(ConfigCommand::Check) => config_check(&cfg),
    }
}

fn config_check(cfg: &Config) -> Result<(), CliError> {
    println!("configuration is valid");
    println!("  data_dir         {}", cfg.data_dir.display());
    println!("  database         {}", cfg.redacted_database_url());
    println!("  listen           {}", cfg.server.listen);
    let tls = match (&cfg.tls, cfg.server.insecure_plaintext) {
        (_, true) => "plaintext (loopback only)".to_owned(),
        (Some(t), false) => format!("mutual TLS (cert {})", t.cert.display()),
        (None, false) => "mutual TLS, certificates not configured".to_owned(),
    };
    println!("  transport        {tls}");
    println!("  principals       {}", cfg.principals.len());
    Ok(())
}

impl Common {
    /// The effective configuration: file, then environment, then flags;
    /// validated.
    pub fn load(&self) -> Result<Config, CliError> {
        let mut cfg = Config::load(self.config.as_deref(), std::env::vars())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(u) = &self.database_url {
            cfg.database_url = Some(u.clone());
        }
        if let Some(k) = &self.hash_key_file {
            cfg.hash_key_file = Some(k.clone());
        }
        cfg.validate().map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(cfg)
    }

    /// The log filter before any configuration is read.
    pub fn log_filter(&self) -> String {
        self.log
            .clone()
            .or_else(|| std::env::var(format!("{}LOG", crate::config::ENV_PREFIX)).ok())
            .unwrap_or_else(|| "info".to_owned())
    }
}

/// Writes a command's output to stdout (see [`output_error`]), where
/// `println!` would panic on a closed pipe.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(output_error)
}

/// A failed write to stdout: a closed pipe ends the command quietly. Only
/// for stdout; a file that cannot be written is an error even when it is a
/// pipe.
pub(crate) fn output_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::ClosedPipe
    } else {
        CliError::Internal(e.to_string())
    }
}

pub async fn open_store(cfg: &Config) -> Result<Store, CliError> {
    Ok(Store::connect(&cfg.database_url()).await?)
}

/// Loads the hash key; creates a random one only at the default path, so a
/// mistyped explicit path is an error rather than a silent new key.
pub fn hasher(cfg: &Config) -> Result<KeyedHasher, CliError> {
    let (path, explicit) = match &cfg.hash_key_file {
        Some(p) => (p.clone(), true),
        None => (cfg.data_dir.join("hash.key"), false),
    };
    if !path.exists() {
        if explicit {
            return Err(CliError::Usage(format!(
                "configuration: hash_key_file: {} does not exist",
                path.display()
            )));
        }
        create_key_file(&path)?;
        tracing::warn!(
            path = %path.display(),
            "created a new hash key; back it up: without it the mirror cannot be matched"
        );
    }
    let key = read_key_file(&path)?;
    KeyedHasher::new(key.expose_secret(), cfg.hash_key_id)
        .map_err(|e| CliError::Usage(format!("configuration: hash_key_file: {e}")))
}

fn read_key_file(path: &Path) -> Result<SecretBox<Vec<u8>>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "configuration: hash_key_file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| {
        CliError::Usage(format!(
            "configuration: hash_key_file: {} must hold the key in hex",
            path.display()
        ))
    })?;
    Ok(SecretBox::new(Box::new(bytes)))
}

fn create_key_file(path: &Path) -> Result<(), CliError> {
    use rand::TryRngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| CliError::Internal(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Internal(e.to_string()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| CliError::Internal(format!("cannot create {}: {e}", path.display())))?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(key)).as_bytes())
        .map_err(|e| CliError::Internal(e.to_string()))
}

/// Whether stderr is a terminal (progress bars only make sense there).
pub fn stderr_is_tty() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}
