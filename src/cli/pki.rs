//! `simverify pki init`: development certificates for mutual TLS.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use crate::clock;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a development CA, a server certificate for localhost, client
    /// certificates for two carriers, an auditor and an admin, and a
    /// matching simverify.toml. Not for production use.
    Init {
        /// Where to write them [default: DATA_DIR/pki].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cfg: &Config, cmd: PkiCommand) -> Result<(), CliError> {
    let PkiCommand::Init { dir, force } = cmd;
    let dir = dir.unwrap_or_else(|| cfg.pki_dir());
    let pki = crate::pki::init(&dir, clock::today_vn(), force).map_err(|e| match e {
        crate::pki::PkiError::Exists(_) => CliError::Usage(e.to_string()),
        e => CliError::Internal(e.to_string()),
    })?;
    println!(
        "wrote a development CA, server and client certificates to {}",
        pki.dir.display()
    );
    println!(
        "configuration: {}",
        pki.dir.join("simverify.toml").display()
    );
    println!(
        "  serve:   simverify --config {} serve",
        pki.dir.join("simverify.toml").display()
    );
    println!("  clients: carrier-a, carrier-b (role carrier), auditor (auditor), admin (admin)");
    Ok(())
}
