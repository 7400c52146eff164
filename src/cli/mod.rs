//! The `simverify` command line. Each subcommand validates its arguments into
//! typed values before doing any work; `main` maps [`CliError`] to exit codes.

mod r#gen;
mod mirror;
mod serve;
mod verify;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretBox};

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
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Data(_) => EXIT_DATA,
            Self::Unavailable(_) => EXIT_UNAVAILABLE,
            Self::Internal(_) => EXIT_SOFTWARE,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyMismatch { .. } | StoreError::BadUrl => Self::Usage(e.to_string()),
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => {
                Self::Unavailable(format!("cannot reach the database: {e}"))
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

/// simverify — verify mobile subscribers against a keyed-hash mirror of the
/// National Population Database.
///
/// Quick start: `simverify serve --demo` starts a gateway on 127.0.0.1:50051
/// with a synthetic demo population in ./simverify-data; `simverify verify
/// --help` shows how to query it.
#[derive(Debug, Parser)]
#[command(name = "simverify", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that touches the store or the hash key.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Directory for the embedded database and the generated hash key.
    #[arg(
        long,
        global = true,
        env = "SIMVERIFY_DATA_DIR",
        default_value = "simverify-data"
    )]
    pub data_dir: PathBuf,
    /// Database: `sqlite://PATH` or `postgres://USER@HOST/DB`. Defaults to
    /// DATA_DIR/simverify.db (SQLite, created on first use).
    #[arg(
        long,
        global = true,
        env = "SIMVERIFY_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// File holding the secret HMAC key (hex, at least 32 bytes). Defaults to
    /// DATA_DIR/hash.key, created with a random key when missing.
    #[arg(long, global = true, env = "SIMVERIFY_HASH_KEY_FILE")]
    pub hash_key_file: Option<PathBuf>,
    /// Id recorded with every hash, so the key can be rotated later.
    #[arg(
        long,
        global = true,
        env = "SIMVERIFY_HASH_KEY_ID",
        default_value_t = 1
    )]
    pub hash_key_id: u16,
    /// Log filter, e.g. `info` or `simverify=debug`.
    #[arg(long, global = true, env = "SIMVERIFY_LOG", default_value = "info")]
    pub log: String,
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
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(a) => serve::run(&cli.common, a).await,
        Command::Verify(a) => verify::run(a).await,
        Command::Mirror(c) => mirror::run(&cli.common, c).await,
        Command::Gen(c) => r#gen::run(c),
    }
}

impl Common {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("simverify.db").display()))
    }

    pub async fn open_store(&self) -> Result<Store, CliError> {
        Ok(Store::connect(&self.database_url()).await?)
    }

    /// Loads the hash key; creates a random one only at the default path,
    /// so a mistyped explicit path is an error rather than a silent new key.
    pub fn hasher(&self) -> Result<KeyedHasher, CliError> {
        let (path, explicit) = match &self.hash_key_file {
            Some(p) => (p.clone(), true),
            None => (self.data_dir.join("hash.key"), false),
        };
        if !path.exists() {
            if explicit {
                return Err(CliError::Usage(format!(
                    "hash_key_file: {} does not exist",
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
        KeyedHasher::new(key.expose_secret(), self.hash_key_id)
            .map_err(|e| CliError::Usage(format!("hash_key_file: {e}")))
    }
}

fn read_key_file(path: &Path) -> Result<SecretBox<Vec<u8>>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "hash_key_file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| {
        CliError::Usage(format!(
            "hash_key_file: {} must hold the key in hex",
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
