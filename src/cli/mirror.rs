//! `simverify mirror …`: import population extracts and inspect the mirror.

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliError, hasher, open_store, stderr_is_tty};
use crate::config::Config;
use crate::mirror::{ImportError, import_csv};

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Import a population CSV (header: id_number,full_name,date_of_birth,sex,status).
    ///
    /// `sex` is M or F; `status` is active, deceased or deleted (empty means
    /// active; deleted removes the person). Re-importing the same file
    /// changes nothing. Bad rows are reported by line number and skipped;
    /// the rest is imported. Every import bumps the mirror version.
    Import {
        /// The CSV file (UTF-8; a BOM is accepted).
        #[arg(long)]
        input: PathBuf,
        /// Also write every rejected row (line, field, reason) to this CSV.
        #[arg(long)]
        rejects: Option<PathBuf>,
    },
    /// Show the mirror's version and size.
    Status,
}

/// Rejected rows printed to the terminal; the rest go to `--rejects`.
const PRINTED_REJECTS: usize = 50;

pub async fn run(cfg: &Config, cmd: MirrorCommand) -> Result<(), CliError> {
    match cmd {
        MirrorCommand::Status => {
            let store = open_store(cfg).await?;
            println!("backend         {}", store.backend());
            println!("mirror_version  {}", store.mirror_version().await?);
            println!("records         {}", store.record_count().await?);
            println!("audit_records   {}", store.audit_count().await?);
            Ok(())
        }
        MirrorCommand::Import { input, rejects } => import(cfg, input, rejects).await,
    }
}

async fn import(cfg: &Config, input: PathBuf, rejects: Option<PathBuf>) -> Result<(), CliError> {
    let file = std::fs::File::open(&input)
        .map_err(|e| CliError::Usage(format!("input: cannot open {}: {e}", input.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let hasher = hasher(cfg)?;
    let store = open_store(cfg).await?;

    let bar = if stderr_is_tty() {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} rows  {per_sec}  {elapsed}")
                .expect("static template"),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let source = input
        .file_name()
        .map_or_else(|| "stdin".into(), |n| n.to_string_lossy().into_owned());
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let result = import_csv(&store, &hasher, reader, &source, |n| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    })
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = result.map_err(|e| match e {
        ImportError::MissingColumn(_) | ImportError::Empty | ImportError::Read(_) => {
            CliError::Data(format!("{}: {e}", input.display()))
        }
        ImportError::Store(e) => CliError::from(e),
    })?;

    for r in report.rejects.iter().take(PRINTED_REJECTS) {
        eprintln!(
            "line {}: {}: {} [{}]",
            r.line, r.field, r.description, r.code
        );
    }
    if report.rejected as usize > PRINTED_REJECTS {
        eprintln!(
            "… and {} more rejected rows",
            report.rejected as usize - PRINTED_REJECTS
        );
    }
    if let Some(path) = rejects {
        let mut w = csv::Writer::from_path(&path).map_err(|e| {
            CliError::Usage(format!("rejects: cannot write {}: {e}", path.display()))
        })?;
        let io = |e: csv::Error| CliError::Internal(e.to_string());
        w.write_record(["line", "field", "reason", "description"])
            .map_err(io)?;
        for r in &report.rejects {
            w.write_record([&r.line.to_string(), r.field, r.code, &r.description])
                .map_err(io)?;
        }
        w.flush().map_err(|e| CliError::Internal(e.to_string()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} into mirror version {}: {} rows read, {} added or changed, {} unchanged, \
         {} deleted, {} rejected ({:.1} s, {:.0} rows/s, {} bytes)",
        input.display(),
        report.version,
        report.rows_read,
        report.changed,
        report.unchanged,
        report.deleted,
        report.rejected,
        secs,
        report.rows_read as f64 / secs.max(1e-9),
        size
    );
    Ok(())
}
