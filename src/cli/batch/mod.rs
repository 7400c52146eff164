//! `simverify batch …`: SIM-cleanup jobs over VerifyStream, resumable, with
//! progress and a cleanup report.

mod job;
pub mod report;
mod wire;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tokio::sync::watch;

use super::CliError;
use super::client::ClientArgs;
use crate::config::Config;
use job::{Checkpoint, InputFingerprint, JobSpec, Output, Stop};

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Verify every line of a subscriber CSV through the gateway.
    ///
    /// Input: UTF-8 CSV with header msisdn,id_number,full_name,date_of_birth,sex
    /// and an optional request_id column (a BOM is accepted; other columns
    /// are ignored with a warning). Output: one row per input row, in input
    /// order. Rows that fail local checks are not sent; they are written as
    /// INVALID with the reason. If the job stops (Ctrl-C, a crash, a lost
    /// connection), run the same command again: it continues from its last
    /// checkpoint.
    Run(RunArgs),
    /// Rebuild the cleanup report from a results file.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Subscriber CSV to verify.
    #[arg(long)]
    pub input: PathBuf,
    /// Results CSV to write (its checkpoint goes next to it, as OUTPUT.checkpoint).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the cleanup report as JSON.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Continue an interrupted job. Re-running the same command does the same;
    /// this flag only makes it an error when there is nothing to resume.
    #[arg(long)]
    pub resume: bool,
    /// Discard an existing output and checkpoint and start over.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Job id recorded in the audit log and used to derive request ids
    /// [default: derived from the input file].
    #[arg(long)]
    pub job_id: Option<String>,
    /// Requests per VerifyStream message (at most the gateway's limit).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,
    /// Messages in flight before waiting for answers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub window: u64,
    /// How often the results are made durable and the checkpoint written, in
    /// milliseconds. A crash loses at most the rows answered since, which a
    /// resumed job sends again (they may then appear twice in the audit log).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub checkpoint_every_ms: u64,
    /// Give up after this many consecutive failed attempts.
    #[arg(long, default_value_t = 20)]
    pub max_retries: u32,
    /// Report identities that appear on more than this many lines.
    #[arg(long, default_value_t = 3)]
    pub max_lines_per_id: usize,
    /// Print ID numbers in the report (they are never printed otherwise).
    #[arg(long)]
    pub show_ids: bool,
    /// No progress output and no printed report (use --summary); warnings
    /// and errors still go to stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results CSV written by `batch run`.
    pub results: PathBuf,
    /// Also write the report as JSON.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub max_lines_per_id: usize,
    /// Print ID numbers of shared identities, read from the original input.
    #[arg(long, requires = "input")]
    pub show_ids: bool,
    /// The job's input file (only needed for --show-ids).
    #[arg(long)]
    pub input: Option<PathBuf>,
}

pub async fn run(cfg: &Config, cmd: BatchCommand) -> Result<(), CliError> {
    match cmd {
        BatchCommand::Run(a) => run_job(cfg, a).await,
        BatchCommand::Report(a) => {
            let input = if a.show_ids { a.input.as_deref() } else { None };
            finish_report(
                &a.results,
                None,
                a.summary.as_deref(),
                a.max_lines_per_id,
                input,
                true,
            )
        }
    }
}

/// Prints and writes the report of the job whose output is `results`, from
/// `counted` when the job has just counted its rows, or else by reading
/// `results`.
fn finish_report(
    results: &Path,
    counted: Option<report::Tally>,
    summary: Option<&Path>,
    max: usize,
    ids_from: Option<&Path>,
    print_report: bool,
) -> Result<(), CliError> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", p.display())))
    };
    let mut report = match counted {
        Some(tally) => tally.finish(max),
        None => report::build(open(results)?, max)
            .map_err(|e| CliError::Data(format!("{}: {e}", results.display())))?,
    };
    if let Some(input) = ids_from {
        report::attach_ids(&mut report, open(input)?)
            .map_err(|e| CliError::Data(format!("{}: {e}", input.display())))?;
    }
    if print_report {
        print!("{}", report.render());
    }
    if let Some(path) = summary {
        let json = serde_json::to_vec_pretty(&report).expect("serialisable");
        std::fs::write(path, json)
            .map_err(|e| CliError::Internal(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn default_job_id(input: &Path, fp: &InputFingerprint) -> String {
    use sha2::Digest;
    let abs = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
    let mut h = sha2::Sha256::new();
    h.update(abs.to_string_lossy().as_bytes());
    h.update(fp.size.to_le_bytes());
    h.update(fp.head.as_bytes());
    format!("job-{}", &hex::encode(h.finalize())[..12])
}

/// Rough row count (newlines minus the header) for the progress display.
fn count_rows(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Some(lines.saturating_sub(1))
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    total: Option<u64>,
    started: Instant,
    first_row: u64,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(quiet: bool, total: Option<u64>, first_row: u64) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total.unwrap_or(0));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} rows  ETA {eta}  {msg}",
                )
                .expect("static template"),
            );
            b.set_position(first_row);
            b
        });
        Self {
            bar,
            quiet,
            total,
            started: Instant::now(),
            first_row,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn update(&self, cp: &Checkpoint) {
        let c = |k: &str| cp.decisions.get(k).copied().unwrap_or(0);
        let counts = format!(
            "VERIFIED {}  MISMATCH {}  NOT_FOUND {}  DECEASED {}  INVALID {}",
            c("VERIFIED"),
            c("MISMATCH"),
            c("NOT_FOUND"),
            c("DECEASED"),
            c("INVALID")
        );
        if let Some(b) = &self.bar {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = (cp.rows_done - self.first_row) as f64 / secs;
            b.set_position(cp.rows_done);
            b.set_message(format!("{rate:.0} rows/s  {counts}"));
        } else if !self.quiet && self.last_line.get().elapsed() >= Duration::from_secs(5) {
            self.last_line.set(Instant::now());
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = (cp.rows_done - self.first_row) as f64 / secs;
            let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!(
                "progress: {}{of} rows, {rate:.0} rows/s, {counts}",
                cp.rows_done
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

async fn run_job(cfg: &Config, a: RunArgs) -> Result<(), CliError> {
    let columns = job::inspect_header(&a.input)?;
    if !columns.ignored.is_empty() && !a.quiet {
        eprintln!(
            "warning: ignoring input columns: {}",
            columns.ignored.join(", ")
        );
    }
    let fp = InputFingerprint::of(&a.input)
        .map_err(|e| CliError::Usage(format!("input: cannot read {}: {e}", a.input.display())))?;
    let existing = if a.force {
        None
    } else {
        Checkpoint::load(&a.output)?
    };
    let cp = match existing {
        Some(cp) if cp.input != fp => {
            return Err(CliError::Usage(format!(
                "{} belongs to a job over a different input; use --force to start over",
                a.output.display()
            )));
        }
        Some(cp) if cp.completed => {
            if !a.quiet {
                eprintln!("job {} already completed; rebuilding its report", cp.job_id);
            }
            return finish_report(
                &a.output,
                None,
                a.summary.as_deref(),
                a.max_lines_per_id,
                a.show_ids.then_some(a.input.as_path()),
                !a.quiet,
            );
        }
        Some(cp) => {
            if !a.quiet {
                eprintln!("resuming job {} after row {}", cp.job_id, cp.rows_done);
            }
            cp
        }
        None if a.resume => {
            return Err(CliError::Usage(format!(
                "nothing to resume: {} has no checkpoint",
                a.output.display()
            )));
        }
        None => {
            if a.output.exists() && !a.force {
                return Err(CliError::Usage(format!(
                    "{} exists and is not a job's output; remove it or use --force",
                    a.output.display()
                )));
            }
            Checkpoint {
                job_id: a
                    .job_id
                    .clone()
                    .unwrap_or_else(|| default_job_id(&a.input, &fp)),
                input: fp,
                rows_done: 0,
                output_bytes: 0,
                completed: false,
                decisions: Default::default(),
            }
        }
    };
    if !crate::domain::request::is_printable_token(&cp.job_id, 48) {
        return Err(CliError::Usage(
            "job_id: must be 1–48 printable ASCII characters".into(),
        ));
    }
    let spec = JobSpec {
        input: a.input.clone(),
        output: a.output.clone(),
        columns,
        job_id: cp.job_id.clone(),
        batch_size: a.batch_size as usize,
        window: a.window as usize,
    };
    let mut out = Output::open(
        &a.output,
        cp,
        std::time::Duration::from_millis(a.checkpoint_every_ms),
    )?;
    let total = if a.quiet { None } else { count_rows(&a.input) };
    let progress = Progress::new(a.quiet, total, out.cp.rows_done);

    let (cancel_tx, mut cancel) = watch::channel(false);
    let signal = crate::cli::serve::shutdown_signal_quiet();
    let signals = tokio::spawn(async move {
        signal.await;
        let _ = cancel_tx.send(true);
    });

    let mut failures = 0u32;
    let result = loop {
        let before = out.cp.rows_done;
        let stop = match a.client.connect(cfg).await {
            Ok(channel) => match job::attempt(&spec, &mut out, channel, &mut cancel, &|cp| {
                progress.update(cp)
            })
            .await
            {
                Ok(()) => break Ok(()),
                Err(stop) => stop,
            },
            Err(CliError::Unavailable(m)) => Stop::Transient {
                reason: m,
                after: None,
            },
            Err(e) => Stop::Fatal(e),
        };
        match stop {
            Stop::Interrupted => {
                break Err(CliError::Unavailable(format!(
                    "interrupted after row {}; run the same command again to resume",
                    out.cp.rows_done
                )));
            }
            Stop::Fatal(e) => break Err(e),
            Stop::Transient { reason, after } => {
                failures = if out.cp.rows_done > before {
                    1
                } else {
                    failures + 1
                };
                if failures > a.max_retries {
                    break Err(CliError::Unavailable(format!(
                        "giving up after {} failed attempts ({reason}); {} rows are done; run the same command again to resume",
                        failures - 1,
                        out.cp.rows_done
                    )));
                }
                let backoff =
                    after.unwrap_or_else(|| Duration::from_millis(250 << failures.min(7)));
                let backoff = backoff.min(Duration::from_secs(60));
                // A warning, not progress: shown even with --quiet.
                progress.finish();
                eprintln!(
                    "warning: retrying in {:.1} s: {reason}",
                    backoff.as_secs_f64()
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = cancel.changed() => break Err(CliError::Unavailable(format!(
                        "interrupted after row {}; run the same command again to resume",
                        out.cp.rows_done
                    ))),
                }
            }
        }
    };
    signals.abort();
    progress.finish();
    result?;
    out.cp.completed = true;
    out.sync()?;
    if !a.quiet {
        eprintln!("job {} completed: {} rows", out.cp.job_id, out.cp.rows_done);
    }
    finish_report(
        &a.output,
        Some(out.into_tally()),
        a.summary.as_deref(),
        a.max_lines_per_id,
        a.show_ids.then_some(a.input.as_path()),
        !a.quiet,
    )
}
