//! `simverify gen …`: synthetic populations and subscriber files.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use crate::clock;
use crate::r#gen::{PopulationConfig, SubscriberConfig, write_population, write_subscribers};

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Write a synthetic population CSV (the `mirror import` format):
    /// realistic Vietnamese names, valid ID numbers, plausible dates.
    Population {
        /// Number of people.
        #[arg(long)]
        count: u64,
        /// Random seed: the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write a subscriber CSV (msisdn,id_number,full_name,date_of_birth,sex)
    /// from a population file, with a controlled share of realistic errors.
    Subscribers {
        /// Population CSV to draw subscribers from.
        #[arg(long)]
        from: PathBuf,
        /// Stop after this many lines (default: one line per person).
        #[arg(long)]
        count: Option<u64>,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of lines with a data error (no diacritics, swapped tokens,
        /// a typo, wrong day, wrong sex).
        #[arg(long, default_value_t = 0.2)]
        error_share: f64,
        /// Share of lines whose ID is not in the population.
        #[arg(long, default_value_t = 0.02)]
        unknown_id_share: f64,
        /// Add `error_kind,expected_decision` columns (for tests).
        #[arg(long)]
        label: bool,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

fn open_output(path: &Option<PathBuf>) -> Result<Box<dyn Write>, CliError> {
    Ok(match path {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| CliError::Usage(format!("output: cannot create {}: {e}", p.display())),
        )?)),
    })
}

fn gen_error(e: crate::r#gen::GenError) -> CliError {
    match e {
        crate::r#gen::GenError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
            CliError::ClosedPipe
        }
        crate::r#gen::GenError::InvalidConfig(m) => CliError::Usage(m),
        crate::r#gen::GenError::MissingColumn(_) => CliError::Data(e.to_string()),
        e => CliError::Internal(e.to_string()),
    }
}

pub fn run(cmd: GenCommand) -> Result<(), CliError> {
    let today = clock::today_vn();
    match cmd {
        GenCommand::Population {
            count,
            seed,
            output,
        } => {
            let out = open_output(&output)?;
            let n = write_population(&PopulationConfig::new(count, seed, today), out)
                .map_err(gen_error)?;
            if output.is_some() {
                eprintln!("wrote {n} people");
            }
        }
        GenCommand::Subscribers {
            from,
            count,
            seed,
            error_share,
            unknown_id_share,
            label,
            output,
        } => {
            for (name, v) in [
                ("error_share", error_share),
                ("unknown_id_share", unknown_id_share),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(CliError::Usage(format!("{name}: must be between 0 and 1")));
                }
            }
            let pop = std::fs::File::open(&from).map_err(|e| {
                CliError::Usage(format!("from: cannot open {}: {e}", from.display()))
            })?;
            let cfg = SubscriberConfig {
                count,
                error_share,
                unknown_id_share,
                label,
                ..SubscriberConfig::new(seed, today)
            };
            let out = open_output(&output)?;
            let summary =
                write_subscribers(std::io::BufReader::new(pop), &cfg, out).map_err(gen_error)?;
            if output.is_some() {
                let kinds: Vec<String> = summary
                    .by_kind
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                eprintln!(
                    "wrote {} subscriber lines ({})",
                    summary.rows,
                    kinds.join(", ")
                );
            }
        }
    }
    Ok(())
}
