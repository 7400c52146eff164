//! `simverify audit …`: what auditors run against a gateway.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::CliError;
use super::client::ClientArgs;
use crate::audit::log::{Signer, verify_checkpoint, verify_log};
use crate::config::Config;
use crate::domain::CivilDate;
use crate::domain::merkle;
use crate::grpc::audit::timestamp;
use crate::grpc::convert;
use crate::proto as pb;
use crate::store::StoredCheckpoint;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records matching the filters, oldest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Stop after this many records (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Counts per carrier, day, decision and purpose.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the public key that verifies this gateway's checkpoints.
    Pubkey,
    /// Show the latest signed checkpoint (tree size, root, time), verified
    /// with the public key when one is given.
    Checkpoint {
        /// Publish a checkpoint of the current log first (auditors).
        #[arg(long)]
        fresh: bool,
        /// Also save it as JSON (for later consistency checks).
        #[arg(long)]
        save: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prove that a record is in the signed log, and check the proof.
    ///
    /// With --audit-id, fetches the proof from the gateway; with --proof, checks
    /// a saved proof offline. Either way the check needs only the public key.
    Prove {
        #[arg(long, required_unless_present = "proof")]
        audit_id: Option<String>,
        /// Check a proof saved with --save, without contacting the gateway.
        #[arg(long, conflicts_with = "audit_id")]
        proof: Option<PathBuf>,
        /// Save the fetched proof as JSON.
        #[arg(long)]
        save: Option<PathBuf>,
        /// `ed25519:<hex>` from `simverify audit pubkey` [default: this
        /// machine's signing key].
        #[arg(long)]
        pubkey: Option<String>,
        /// Prove against the checkpoint of this size [default: the latest].
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prove that an older checkpoint's log is a prefix of a newer one's.
    ///
    /// Fetches the proof (--first/--second), or checks one saved earlier
    /// (--proof) offline; either way only the public key is needed.
    Consistency {
        /// Size of the older checkpoint.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// [default: the latest checkpoint]
        #[arg(long, default_value_t = 0)]
        second: u64,
        /// Check a proof saved with --save, without contacting the gateway.
        #[arg(long)]
        proof: Option<PathBuf>,
        /// Save the fetched proof as JSON.
        #[arg(long)]
        save: Option<PathBuf>,
        #[arg(long)]
        pubkey: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recompute the whole log from the store (run where the database is):
    /// every record's hash, every tile, every signed checkpoint. Reports the
    /// first record that does not match, or the record count and root.
    Verify {
        #[arg(long)]
        pubkey: Option<String>,
    },
    /// Remove audit records older than the given months (run where the
    /// database is). A checkpoint covering them is published first, and the
    /// hashes the remaining log needs are kept, so `audit verify` and every
    /// proof still work on what remains.
    Retain {
        /// Keep this many calendar months (UTC) before the current one.
        #[arg(long)]
        months: u32,
    },
    /// Write every matching record to a file (streamed page by page).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// From this time: YYYY-MM-DD (Vietnam midnight) or RFC 3339.
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time: YYYY-MM-DD (Vietnam midnight) or RFC 3339.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this calling carrier (carriers may only name themselves).
    #[arg(long)]
    pub carrier: Option<String>,
    /// VERIFIED, MISMATCH, NOT_FOUND, DECEASED or INVALID.
    #[arg(long)]
    pub decision: Option<String>,
    /// ACTIVATION, REVERIFICATION, CLEANUP or OWNERSHIP_TRANSFER.
    #[arg(long)]
    pub purpose: Option<String>,
    #[arg(long)]
    pub request_id: Option<String>,
    #[arg(long)]
    pub job_id: Option<String>,
    /// A subscriber's phone number (hashed by the gateway; never stored).
    #[arg(long)]
    pub msisdn: Option<String>,
    /// A subscriber's ID number (hashed by the gateway; never stored).
    #[arg(long = "id")]
    pub id_number: Option<String>,
}

/// `YYYY-MM-DD` (midnight in Vietnam) or `YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)`.
pub fn parse_time(flag: &str, s: &str) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{flag}: `{s}` is not YYYY-MM-DD or an RFC 3339 time"
        ))
    };
    let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
    let date = s.get(..10).ok_or_else(bad)?;
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let d = CivilDate::new(
        num(parts[0])? as i32,
        num(parts[1])? as u8,
        num(parts[2])? as u8,
    )
    .ok_or_else(bad)?;
    let day_secs = d.to_unix_days() * 86_400;
    let rest = &s[10..];
    if rest.is_empty() {
        return Ok((day_secs - crate::clock::VN_OFFSET_SECS) * 1_000_000);
    }
    let rest = rest
        .strip_prefix('T')
        .or_else(|| rest.strip_prefix(' '))
        .ok_or_else(bad)?;
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => return Err(bad()),
    };
    let hms: Vec<&str> = clock.split(':').collect();
    if hms.len() != 3 {
        return Err(bad());
    }
    let (sec, frac) = hms[2].split_once('.').unwrap_or((hms[2], ""));
    let micros_frac = if frac.is_empty() {
        0
    } else {
        num(&format!("{:0<6}", &frac[..frac.len().min(6)]))?
    };
    let secs = num(hms[0])? * 3600 + num(hms[1])? * 60 + num(sec)?;
    let off = match offset {
        "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':').ok_or_else(bad)?;
            sign * (num(h)? * 3600 + num(m)? * 60)
        }
    };
    Ok((day_secs + secs - off) * 1_000_000 + micros_frac)
}

fn enum_value(
    flag: &str,
    value: &Option<String>,
    parse: impl Fn(&str) -> Option<i32>,
) -> Result<i32, CliError> {
    match value {
        None => Ok(0),
        Some(v) => parse(&v.to_ascii_uppercase())
            .ok_or_else(|| CliError::Usage(format!("{flag}: unknown value `{v}`"))),
    }
}

impl FilterArgs {
    fn to_pb(&self) -> Result<pb::AuditFilter, CliError> {
        Ok(pb::AuditFilter {
            since: self
                .since
                .as_deref()
                .map(|s| parse_time("since", s))
                .transpose()?
                .map(timestamp),
            until: self
                .until
                .as_deref()
                .map(|s| parse_time("until", s))
                .transpose()?
                .map(timestamp),
            carrier_id: self.carrier.clone().unwrap_or_default(),
            decision: enum_value("decision", &self.decision, |s| {
                pb::Decision::from_str_name(&format!("DECISION_{s}")).map(|d| d as i32)
            })?,
            purpose: enum_value("purpose", &self.purpose, |s| {
                pb::Purpose::from_str_name(&format!("PURPOSE_{s}")).map(|d| d as i32)
            })?,
            request_id: self.request_id.clone().unwrap_or_default(),
            job_id: self.job_id.clone().unwrap_or_default(),
            msisdn: self.msisdn.clone().unwrap_or_default(),
            id_number: self.id_number.clone().unwrap_or_default(),
        })
    }
}

fn rfc3339(ts: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = ts else { return String::new() };
    let d = CivilDate::from_unix_days(t.seconds.div_euclid(86_400));
    let s = t.seconds.rem_euclid(86_400);
    format!(
        "{d}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.nanos / 1000
    )
}

const CSV_HEADER: [&str; 16] = [
    "recorded_at",
    "audit_id",
    "caller",
    "request_id",
    "job_id",
    "purpose",
    "decision",
    "id_number",
    "full_name",
    "date_of_birth",
    "sex",
    "name_tier",
    "name_score",
    "recommended_action",
    "reasons",
    "subject_ref",
];

fn purpose_name(v: i32) -> &'static str {
    pb::Purpose::try_from(v)
        .map(|p| p.as_str_name().trim_start_matches("PURPOSE_"))
        .unwrap_or("UNSPECIFIED")
}

fn fields(r: &pb::AuditRecord) -> Vec<String> {
    vec![
        rfc3339(&r.recorded_at),
        r.audit_id.clone(),
        r.caller.clone(),
        r.request_id.clone(),
        r.job_id.clone(),
        purpose_name(r.purpose).to_owned(),
        convert::decision_name(r.decision).to_owned(),
        convert::field_name(r.id_number).to_owned(),
        convert::field_name(r.full_name).to_owned(),
        convert::field_name(r.date_of_birth).to_owned(),
        convert::field_name(r.sex).to_owned(),
        if r.name_tier == 0 {
            String::new()
        } else {
            convert::tier_name(r.name_tier).to_owned()
        },
        r.name_score.to_string(),
        convert::action_name(r.recommended_action).to_owned(),
        r.reasons.join(";"),
        r.subject_ref.get(..16).unwrap_or_default().to_owned(),
    ]
}

fn json(r: &pb::AuditRecord) -> serde_json::Value {
    let f = fields(r);
    let mut m = serde_json::Map::new();
    for (k, v) in CSV_HEADER.iter().zip(f) {
        m.insert((*k).to_owned(), serde_json::Value::String(v));
    }
    m.insert(
        "subject_ref".into(),
        serde_json::Value::String(r.subject_ref.clone()),
    );
    m.insert(
        "msisdn_ref".into(),
        serde_json::Value::String(r.msisdn_ref.clone()),
    );
    m.insert(
        "consent_ref".into(),
        serde_json::Value::String(r.consent_ref.clone()),
    );
    m.insert("mirror_version".into(), r.mirror_version.into());
    m.insert("latency_us".into(), r.latency_us.into());
    serde_json::Value::Object(m)
}

/// Field results in a few characters, for the table.
fn short(r: &str) -> &'static str {
    match r {
        "MATCH" => "ok",
        "MISMATCH" => "NO",
        "NOT_PROVIDED" => "-",
        _ => "n/a",
    }
}

struct Sink {
    out: Box<dyn Write>,
    format: Format,
    csv_started: bool,
    table: Vec<Vec<String>>,
}

impl Sink {
    fn new(out: Box<dyn Write>, format: Format) -> Self {
        Self {
            out,
            format,
            csv_started: false,
            table: Vec::new(),
        }
    }

    fn record(&mut self, r: &pb::AuditRecord) -> std::io::Result<()> {
        match self.format {
            Format::Jsonl => writeln!(self.out, "{}", json(r)),
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new());
                if !self.csv_started {
                    w.write_record(CSV_HEADER).map_err(std::io::Error::other)?;
                    self.csv_started = true;
                }
                w.write_record(fields(r)).map_err(std::io::Error::other)?;
                self.out.write_all(
                    &w.into_inner()
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                )
            }
            Format::Table => {
                let f = fields(r);
                // The columns an auditor scans; the rest is in csv/jsonl.
                self.table.push(vec![
                    f[0][..19].replace('T', " "),
                    f[2].clone(),
                    f[6].clone(),
                    f[5].clone(),
                    [&f[7], &f[8], &f[9], &f[10]].map(|r| short(r)).join(" "),
                    f[13].clone(),
                    f[3].clone(),
                    f[1].clone(),
                ]);
                Ok(())
            }
        }
    }

    fn finish(mut self) -> std::io::Result<()> {
        if matches!(self.format, Format::Table) {
            let header: Vec<String> = [
                "time (UTC)",
                "caller",
                "decision",
                "purpose",
                "id name dob sex",
                "action",
                "request_id",
                "audit_id",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
            for row in &self.table {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&self.table) {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                writeln!(self.out, "{}", line.join("  ").trim_end())?;
            }
            writeln!(self.out, "{} records", self.table.len())?;
        }
        self.out.flush()
    }
}

fn status_error(s: tonic::Status) -> CliError {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            CliError::Data(format!("refused: {}", s.message()))
        }
        tonic::Code::DataLoss => CliError::Data(format!("AUDIT LOG DAMAGED: {}", s.message())),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            CliError::Usage(format!("refused ({:?}): {}", s.code(), s.message()))
        }
        tonic::Code::Unavailable => CliError::Unavailable(s.message().to_owned()),
        c => CliError::Internal(format!("gateway error ({c:?}): {}", s.message())),
    }
}

async fn pages(
    client: &mut pb::audit_client::AuditClient<tonic::transport::Channel>,
    filter: pb::AuditFilter,
    limit: u64,
    mut each: impl FnMut(&pb::AuditRecord) -> Result<(), CliError>,
) -> Result<u64, CliError> {
    let mut token = String::new();
    let mut n = 0u64;
    loop {
        let size = if limit == 0 {
            1000
        } else {
            (limit - n).min(1000) as u32
        };
        let page = client
            .query(pb::AuditQuery {
                filter: Some(filter.clone()),
                page_size: size,
                page_token: token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for r in &page.records {
            each(r)?;
            n += 1;
        }
        if page.next_page_token.is_empty() || (limit != 0 && n >= limit) {
            return Ok(n);
        }
        token = page.next_page_token;
    }
}

/// `ed25519:<hex>` → key bytes.
fn parse_pubkey(s: &str) -> Result<[u8; 32], CliError> {
    let h = s.strip_prefix("ed25519:").unwrap_or(s);
    hex::decode(h)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| CliError::Usage("pubkey: expected ed25519:<64 hex digits>".into()))
}

/// The public key to check against: the flag, else this machine's key.
fn pubkey(cfg: &Config, flag: &Option<String>) -> Result<[u8; 32], CliError> {
    match flag {
        Some(s) => parse_pubkey(s),
        None => {
            let (path, _) = cfg.audit_signing_key();
            let signer = Signer::load_or_create(&path, false).map_err(|e| {
                CliError::Usage(format!(
                    "pubkey: no --pubkey given and no local signing key ({e})"
                ))
            })?;
            Ok(signer.public_key())
        }
    }
}

fn stored(c: &pb::SignedCheckpoint) -> Result<StoredCheckpoint, CliError> {
    Ok(StoredCheckpoint {
        size: c.size,
        root: c
            .root
            .as_slice()
            .try_into()
            .map_err(|_| CliError::Data("checkpoint root is not 32 bytes".into()))?,
        signed_at: c.signed_at_micros,
        key_id: c.key_id.clone(),
        signature: c.signature.clone(),
    })
}

fn hashes(v: &[Vec<u8>]) -> Result<Vec<merkle::Hash>, CliError> {
    v.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| CliError::Data("proof hash is not 32 bytes".into()))
        })
        .collect()
}

/// A proof as saved to disk: everything an offline check needs.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedProof {
    audit_id: String,
    leaf_index: u64,
    leaf: String,
    path: Vec<String>,
    checkpoint: SavedCheckpoint,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedConsistency {
    first: SavedCheckpoint,
    second: SavedCheckpoint,
    path: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCheckpoint {
    size: u64,
    root: String,
    signed_at_micros: i64,
    key_id: String,
    signature: String,
}

impl SavedCheckpoint {
    fn of(c: &StoredCheckpoint) -> Self {
        Self {
            size: c.size,
            root: hex::encode(c.root),
            signed_at_micros: c.signed_at,
            key_id: c.key_id.clone(),
            signature: hex::encode(&c.signature),
        }
    }
    fn to_stored(&self) -> Result<StoredCheckpoint, CliError> {
        let bad = || CliError::Data("the saved checkpoint is malformed".into());
        Ok(StoredCheckpoint {
            size: self.size,
            root: hex::decode(&self.root)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?,
            signed_at: self.signed_at_micros,
            key_id: self.key_id.clone(),
            signature: hex::decode(&self.signature).map_err(|_| bad())?,
        })
    }
}

/// Checks a proof with the public key only; says what failed.
fn check_proof(p: &SavedProof, key: &[u8; 32]) -> Result<(), CliError> {
    let cp = p.checkpoint.to_stored()?;
    if !verify_checkpoint(key, &cp) {
        return Err(CliError::Data(
            "PROOF FAILED: the checkpoint's signature does not verify with this public key".into(),
        ));
    }
    let leaf =
        hex::decode(&p.leaf).map_err(|_| CliError::Data("the saved leaf is not hex".into()))?;
    let path: Vec<merkle::Hash> = p
        .path
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| CliError::Data("the saved path is malformed".into()))?;
    let leaf_hash = merkle::leaf_hash_of_bytes(&leaf);
    if !merkle::verify_inclusion(&leaf_hash, p.leaf_index, cp.size, &path, &cp.root) {
        return Err(CliError::Data(format!(
            "PROOF FAILED: record {} at position {} is not in the log signed at size {} (altered or not included)",
            p.audit_id, p.leaf_index, cp.size
        )));
    }
    Ok(())
}

pub async fn run(cfg: &Config, cmd: AuditCommand) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Internal(e.to_string());
    // Writes to stdout: a closed pipe ends a listing quietly.
    let stdout = super::output_error;
    match cmd {
        AuditCommand::Pubkey => {
            let (path, create) = cfg.audit_signing_key();
            let s = Signer::load_or_create(&path, create).map_err(|e| {
                CliError::Usage(format!("configuration: audit_signing_key_file: {e}"))
            })?;
            println!("ed25519:{}", hex::encode(s.public_key()));
            eprintln!("key id {}", s.key_id());
            Ok(())
        }
        AuditCommand::Checkpoint {
            fresh,
            save,
            client,
        } => {
            let mut c =
                pb::audit_client::AuditClient::new(client.connect_as(cfg, "auditor").await?);
            let cp = c
                .checkpoint(pb::CheckpointRequest { fresh })
                .await
                .map_err(status_error)?
                .into_inner();
            let st = stored(&cp)?;
            println!("size       {}", st.size);
            println!("root       {}", hex::encode(st.root));
            println!("signed_at  {}", rfc3339(&Some(timestamp(st.signed_at))));
            println!("key_id     {}", st.key_id);
            if let Some(path) = save {
                let json =
                    serde_json::to_vec_pretty(&SavedCheckpoint::of(&st)).expect("serialisable");
                std::fs::write(&path, json).map_err(io)?;
            }
            Ok(())
        }
        AuditCommand::Prove {
            audit_id,
            proof,
            save,
            pubkey: pk,
            tree_size,
            client,
        } => {
            let key = pubkey(cfg, &pk)?;
            let saved = match (audit_id, proof) {
                (_, Some(path)) => {
                    serde_json::from_slice::<SavedProof>(&std::fs::read(&path).map_err(io)?)
                        .map_err(|e| {
                            CliError::Data(format!("{}: not a saved proof ({e})", path.display()))
                        })?
                }
                (Some(id), None) => {
                    let mut c = pb::audit_client::AuditClient::new(
                        client.connect_as(cfg, "auditor").await?,
                    );
                    let p = c
                        .prove_inclusion(pb::InclusionRequest {
                            audit_id: id.clone(),
                            tree_size,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let cp = stored(
                        p.checkpoint
                            .as_ref()
                            .ok_or_else(|| CliError::Data("no checkpoint in the proof".into()))?,
                    )?;
                    SavedProof {
                        audit_id: id,
                        leaf_index: p.leaf_index,
                        leaf: hex::encode(&p.leaf),
                        path: hashes(&p.path)?.iter().map(hex::encode).collect(),
                        checkpoint: SavedCheckpoint::of(&cp),
                    }
                }
                (None, None) => return Err(CliError::Usage("give --audit-id or --proof".into())),
            };
            if let Some(path) = save {
                std::fs::write(
                    &path,
                    serde_json::to_vec_pretty(&saved).expect("serialisable"),
                )
                .map_err(io)?;
            }
            check_proof(&saved, &key)?;
            println!(
                "proof OK: record {} is at position {} of the log signed at size {} (root {})",
                saved.audit_id, saved.leaf_index, saved.checkpoint.size, saved.checkpoint.root
            );
            Ok(())
        }
        AuditCommand::Consistency {
            first,
            second,
            proof,
            save,
            pubkey: pk,
            client,
        } => {
            let key = pubkey(cfg, &pk)?;
            if proof.is_none() && first == 0 {
                return Err(CliError::Usage(
                    "give --first (a checkpoint's size) or --proof FILE".into(),
                ));
            }
            let saved = match proof {
                Some(path) => {
                    serde_json::from_slice::<SavedConsistency>(&std::fs::read(&path).map_err(io)?)
                        .map_err(|e| {
                        CliError::Data(format!(
                            "{}: not a saved consistency proof ({e})",
                            path.display()
                        ))
                    })?
                }
                None => {
                    let mut c = pb::audit_client::AuditClient::new(
                        client.connect_as(cfg, "auditor").await?,
                    );
                    let p = c
                        .prove_consistency(pb::ConsistencyRequest { first, second })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let missing = || CliError::Data("the proof lacks a checkpoint".into());
                    SavedConsistency {
                        first: SavedCheckpoint::of(&stored(p.first.as_ref().ok_or_else(missing)?)?),
                        second: SavedCheckpoint::of(&stored(
                            p.second.as_ref().ok_or_else(missing)?,
                        )?),
                        path: hashes(&p.path)?.iter().map(hex::encode).collect(),
                    }
                }
            };
            if let Some(path) = save {
                std::fs::write(
                    &path,
                    serde_json::to_vec_pretty(&saved).expect("serialisable"),
                )
                .map_err(io)?;
            }
            let (a, b) = (saved.first.to_stored()?, saved.second.to_stored()?);
            if !verify_checkpoint(&key, &a) || !verify_checkpoint(&key, &b) {
                return Err(CliError::Data(
                    "PROOF FAILED: a checkpoint's signature does not verify".into(),
                ));
            }
            let path: Vec<merkle::Hash> = saved
                .path
                .iter()
                .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| CliError::Data("the saved path is malformed".into()))?;
            if !merkle::verify_consistency(a.size, b.size, &a.root, &b.root, &path) {
                return Err(CliError::Data(format!(
                    "PROOF FAILED: the log of size {} is not a prefix of the log of size {}",
                    a.size, b.size
                )));
            }
            println!(
                "consistency OK: the log of size {} is a prefix of the log of size {}",
                a.size, b.size
            );
            Ok(())
        }
        AuditCommand::Retain { months } => {
            if months == 0 {
                return Err(CliError::Usage("months: must be at least 1".into()));
            }
            let (path, create) = cfg.audit_signing_key();
            let signer = Signer::load_or_create(&path, create).map_err(|e| {
                CliError::Usage(format!("configuration: audit_signing_key_file: {e}"))
            })?;
            let store = super::open_store(cfg).await?;
            let cutoff = crate::config::retention_cutoff(crate::clock::now_micros(), months);
            let r = crate::audit::log::apply_retention(&store, &signer, cutoff)
                .await
                .map_err(|e| CliError::Internal(e.to_string()))?;
            store.close().await;
            println!(
                "removed {} audit records; the log now starts at position {}",
                r.removed, r.start
            );
            Ok(())
        }
        AuditCommand::Verify { pubkey: pk } => {
            let key = pubkey(cfg, &pk)?;
            let store = super::open_store(cfg).await?;
            let v = verify_log(&store, Some(&key))
                .await
                .map_err(|e| CliError::Internal(e.to_string()))?;
            store.close().await;
            match v.problem {
                None => {
                    println!(
                        "audit log intact: {} records, root {}, {} signed checkpoints verified",
                        v.records,
                        hex::encode(v.root),
                        v.checkpoints
                    );
                    if v.pruned > 0 {
                        println!("(positions before {} were removed by retention)", v.pruned);
                    }
                    Ok(())
                }
                Some((pos, what)) => Err(CliError::Data(format!(
                    "AUDIT LOG TAMPERED: first bad position {pos}: {what}"
                ))),
            }
        }
        AuditCommand::Query {
            filter,
            format,
            limit,
            client,
        } => {
            let mut c =
                pb::audit_client::AuditClient::new(client.connect_as(cfg, "auditor").await?);
            let mut sink = Sink::new(Box::new(std::io::stdout().lock()), format);
            pages(&mut c, filter.to_pb()?, limit, |r| {
                sink.record(r).map_err(stdout)
            })
            .await?;
            sink.finish().map_err(stdout)
        }
        AuditCommand::Export {
            filter,
            output,
            format,
            client,
        } => {
            let mut c =
                pb::audit_client::AuditClient::new(client.connect_as(cfg, "auditor").await?);
            let file = std::fs::File::create(&output).map_err(|e| {
                CliError::Usage(format!("output: cannot create {}: {e}", output.display()))
            })?;
            let mut sink = Sink::new(Box::new(std::io::BufWriter::new(file)), format);
            let bar = super::stderr_is_tty().then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {pos} records  {per_sec}")
                        .expect("static"),
                );
                b
            });
            let n = pages(&mut c, filter.to_pb()?, 0, |r| {
                if let Some(b) = &bar {
                    b.inc(1);
                }
                sink.record(r).map_err(io)
            })
            .await?;
            sink.finish().map_err(io)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            eprintln!("exported {n} records to {}", output.display());
            Ok(())
        }
        AuditCommand::Stats {
            filter,
            format,
            client,
        } => {
            let mut c =
                pb::audit_client::AuditClient::new(client.connect_as(cfg, "auditor").await?);
            let rows = c
                .stats(pb::AuditStatsRequest {
                    filter: Some(filter.to_pb()?),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .rows;
            let mut out = std::io::stdout().lock();
            for (i, r) in rows.iter().enumerate() {
                let decision = convert::decision_name(r.decision);
                let purpose = purpose_name(r.purpose);
                match format {
                    Format::Jsonl => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"carrier_id": r.carrier_id, "day": r.day, "decision": decision, "purpose": purpose, "count": r.count})
                    ),
                    Format::Csv => {
                        if i == 0 {
                            writeln!(out, "carrier_id,day,decision,purpose,count").map_err(stdout)?;
                        }
                        writeln!(out, "{},{},{decision},{purpose},{}", r.carrier_id, r.day, r.count)
                    }
                    Format::Table => {
                        if i == 0 {
                            writeln!(out, "{:<20} {:<10} {:<10} {:<18} {:>10}", "carrier", "day", "decision", "purpose", "count")
                                .map_err(stdout)?;
                        }
                        writeln!(out, "{:<20} {:<10} {:<10} {:<18} {:>10}", r.carrier_id, r.day, decision, purpose, r.count)
                    }
                }
                .map_err(stdout)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times() {
        assert_eq!(parse_time("t", "1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_time("t", "1970-01-01T07:00:00+07:00").unwrap(), 0);
        assert_eq!(
            parse_time("t", "1970-01-02").unwrap(),
            (86_400 - crate::clock::VN_OFFSET_SECS) * 1_000_000
        );
        assert_eq!(
            parse_time("t", "2026-11-22T10:00:00.5Z").unwrap() % 1_000_000,
            500_000
        );
        assert!(parse_time("t", "2026-13-01").is_err());
        assert!(parse_time("t", "yesterday").is_err());
    }
}
