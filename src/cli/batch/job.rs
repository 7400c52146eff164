//! Running a cleanup job: read the subscriber file in chunks, validate rows
//! locally, stream the valid ones through VerifyStream with a bounded window,
//! and write results in input order with durable checkpoints.
//!
//! Durability: results are appended to the output; every few seconds the
//! output is fsynced and then a checkpoint (rows done, output length) is
//! atomically replaced. Resuming truncates the output to the checkpoint's
//! length and skips that many input rows, so every row appears exactly once
//! however the previous run ended. Rows that were in flight when it ended
//! are sent again; their audit records may then exist twice, never zero
//! times.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use super::report::{OUTPUT_COLUMNS, RowView, Tally};
use super::wire::{BatchEncoder, EncodedBatch};
use crate::cli::CliError;
use crate::domain::{CitizenId, RawRequest, Sex, VerifyInput};
use crate::grpc::convert;
use crate::proto as pb;

pub const REQUIRED_INPUT: [&str; 5] = ["msisdn", "id_number", "full_name", "date_of_birth", "sex"];

/// Where each needed column is in the input.
#[derive(Debug, Clone)]
pub struct Columns {
    pub count: usize,
    msisdn: usize,
    id: usize,
    name: usize,
    dob: usize,
    sex: usize,
    request_id: Option<usize>,
    /// Columns we do not use, for the warning.
    pub ignored: Vec<String>,
}

/// Reads the header; a missing required column stops the job before anything is sent.
pub fn inspect_header(path: &Path) -> Result<Columns, CliError> {
    let file = File::open(path)
        .map_err(|e| CliError::Usage(format!("input: cannot open {}: {e}", path.display())))?;
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let header = rdr
        .byte_headers()
        .map_err(|e| CliError::Data(format!("{}: cannot read the header: {e}", path.display())))?;
    let names: Vec<String> = header
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let find = |c: &str| names.iter().position(|n| n == c);
    for c in REQUIRED_INPUT {
        if find(c).is_none() {
            return Err(CliError::Data(format!(
                "{}: the header lacks the column `{c}` (expected {})",
                path.display(),
                REQUIRED_INPUT.join(",")
            )));
        }
    }
    let known = |n: &String| REQUIRED_INPUT.contains(&n.as_str()) || n == "request_id";
    Ok(Columns {
        count: names.len(),
        msisdn: find("msisdn").expect("checked"),
        id: find("id_number").expect("checked"),
        name: find("full_name").expect("checked"),
        dob: find("date_of_birth").expect("checked"),
        sex: find("sex").expect("checked"),
        request_id: find("request_id"),
        ignored: names.iter().filter(|n| !known(n)).cloned().collect(),
    })
}

/// Identifies the input a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFingerprint {
    pub size: u64,
    /// SHA-256 of the first MiB.
    pub head: String,
}

impl InputFingerprint {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let mut f = File::open(path)?;
        let size = f.metadata()?.len();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < buf.len() {
            let k = f.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(Self {
            size,
            head: hex::encode(Sha256::digest(&buf[..n])),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job_id: String,
    pub input: InputFingerprint,
    /// Input rows whose results are in the output.
    pub rows_done: u64,
    /// Length of the output holding exactly those rows.
    pub output_bytes: u64,
    pub completed: bool,
    pub decisions: BTreeMap<String, u64>,
}

pub fn checkpoint_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".checkpoint");
    PathBuf::from(s)
}

impl Checkpoint {
    pub fn load(output: &Path) -> Result<Option<Self>, CliError> {
        let path = checkpoint_path(output);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                CliError::Data(format!(
                    "{}: unreadable checkpoint ({e}); use --force to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Replaces the checkpoint atomically (write, fsync, rename).
    pub fn store(&self, output: &Path) -> Result<(), CliError> {
        let path = checkpoint_path(output);
        let tmp = path.with_extension("checkpoint.tmp");
        let io =
            |e: std::io::Error| CliError::Internal(format!("cannot write {}: {e}", path.display()));
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("serialisable"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        // The rename itself must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Groups lines of one person without writing the ID: a fingerprint salted
/// with the job id (the first 8 bytes of a SHA-256).
pub fn id_ref(job_id: &str, id: &CitizenId) -> u64 {
    let mut h = Sha256::new();
    h.update(b"simverify id_ref\0");
    h.update(job_id.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 of 32 bytes"))
}

/// The `id_ref` column: 16 hex digits, or empty for rows without a valid ID.
fn id_ref_text(id_ref: Option<u64>, buf: &mut [u8; 16]) -> &str {
    match id_ref {
        Some(fp) => {
            hex::encode_to_slice(fp.to_be_bytes(), buf).expect("16 hex digits for 8 bytes");
            std::str::from_utf8(buf).expect("hex is ASCII")
        }
        None => "",
    }
}

enum Entry {
    /// Refused locally: written without asking the gateway. Rare, so it
    /// keeps its own strings.
    Local {
        row: u64,
        msisdn: String,
        request_id: String,
        error: String,
        id_ref: Option<u64>,
    },
    /// Sent; its answer comes back in the chunk's batch result. Its text is
    /// in the chunk's `text`, so a chunk's rows are a few contiguous
    /// allocations rather than several scattered ones per row, which the
    /// answers (arriving a window later, on another thread) read cold.
    Remote {
        row: u64,
        msisdn: std::ops::Range<usize>,
        /// The input's own request id; `None` when derived from the row.
        request_id: Option<std::ops::Range<usize>>,
        id_ref: Option<u64>,
    },
}

impl Entry {
    fn row(&self) -> u64 {
        match self {
            Entry::Local { row, .. } | Entry::Remote { row, .. } => *row,
        }
    }
}

/// The request id the CLI derives for a row of an input without them,
/// written into `buf` (one buffer for every row of a job).
fn derived_request_id<'b>(buf: &'b mut String, job_id: &str, row: u64) -> &'b str {
    buf.clear();
    buf.push_str(job_id);
    buf.push('-');
    buf.push_str(itoa::Buffer::new().format(row));
    buf
}

/// Whether `id` is the derived request id of `row`, without building it.
fn is_derived_request_id(id: &str, job_id: &str, row: u64) -> bool {
    id.strip_prefix(job_id)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|n| n == itoa::Buffer::new().format(row))
}

struct Chunk {
    seq: u64,
    entries: Vec<Entry>,
    /// The remote entries' msisdns and request ids.
    text: String,
    /// The requests to send, until they are sent.
    batch: Option<EncodedBatch>,
    /// Whether the gateway owes this chunk an answer.
    remote: bool,
}

impl Chunk {
    fn text(&self, r: &std::ops::Range<usize>) -> &str {
        &self.text[r.clone()]
    }
}

pub struct JobSpec {
    pub input: PathBuf,
    pub output: PathBuf,
    pub columns: Columns,
    pub job_id: String,
    pub batch_size: usize,
    pub window: usize,
}

/// Why an attempt ended early.
pub enum Stop {
    /// Worth retrying after `after` (connection lost, overload, quota).
    Transient {
        reason: String,
        after: Option<Duration>,
    },
    Fatal(CliError),
    Interrupted,
}

fn classify(status: &tonic::Status) -> Stop {
    let after = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    let fatal = |hint: &str| {
        Stop::Fatal(CliError::Data(format!(
            "the gateway refused the job ({:?}): {}{hint}",
            status.code(),
            status.message()
        )))
    };
    match status.code() {
        // Too many requests per message, or a message over the size limit:
        // sending the same batch again cannot succeed.
        Code::InvalidArgument if status.message().contains("per message") => {
            fatal("; lower --batch-size")
        }
        Code::ResourceExhausted if after.is_none() => fatal("; lower --batch-size"),
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::Unimplemented
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists => fatal(""),
        code => Stop::Transient {
            reason: format!("{code:?}: {}", status.message()),
            after,
        },
    }
}

/// Why a call whose request side has closed ended. Answers still in flight
/// are dropped (their rows are re-sent on retry, which the audit tolerates);
/// the final status decides between retrying and stopping.
async fn ended_call_status(results: &mut tonic::Streaming<pb::VerifyBatchResult>) -> Stop {
    let closed = || Stop::Transient {
        reason: "the stream closed".into(),
        after: None,
    };
    let drain = async {
        loop {
            match results.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return classify(&status),
                None => return closed(),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap_or_else(|_| closed())
}

/// Reads input rows after `skip`, validates them and groups them into chunks.
fn read_chunks(spec: &JobSpec, skip: u64, tx: mpsc::Sender<Result<Chunk, String>>) {
    let today = crate::clock::today_vn();
    let cols = &spec.columns;
    let file = match File::open(&spec.input) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(format!("cannot open {}: {e}", spec.input.display())));
            return;
        }
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let mut rec = csv::ByteRecord::new();
    let mut row = 0u64;
    // batch_seq only needs to be unique within one stream.
    let mut seq = 0u64;
    let mut entries = Vec::with_capacity(spec.batch_size);
    let mut kept = String::new();
    let mut derived_id = String::new();
    let new_batch = |seq: u64| BatchEncoder::new(seq, &spec.job_id, spec.batch_size * 128);
    let mut batch = new_batch(seq + 1);
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("cannot read {}: {e}", spec.input.display())));
                return;
            }
        }
        row += 1;
        if row <= skip {
            continue;
        }
        // One UTF-8 check for the whole row, the fields sliced out of it
        // (`get` refuses a field that would split a character); field by
        // field only when the row is not valid as a whole.
        let whole = std::str::from_utf8(rec.as_slice()).ok();
        let text = |i: usize| -> Option<&str> {
            match whole {
                Some(w) => rec.range(i).map_or(Some(""), |r| w.get(r)),
                None => std::str::from_utf8(rec.get(i).unwrap_or_default()).ok(),
            }
        };
        let own_request_id = cols.request_id.and_then(text).filter(|r| !r.is_empty());
        let request_id = match own_request_id {
            Some(r) => r,
            None => derived_request_id(&mut derived_id, &spec.job_id, row),
        };
        macro_rules! local {
            ($error:expr, $id_ref:expr) => {
                Entry::Local {
                    row,
                    msisdn: match text(cols.msisdn) {
                        Some(m) => m.to_owned(),
                        None => String::from_utf8_lossy(rec.get(cols.msisdn).unwrap_or_default())
                            .into_owned(),
                    },
                    request_id: request_id.to_owned(),
                    error: $error,
                    id_ref: $id_ref,
                }
            };
        }
        let entry = if rec.len() != cols.count {
            local!(
                format!(
                    "row: has {} fields; the header has {}",
                    rec.len(),
                    cols.count
                ),
                None
            )
        } else {
            match (
                text(cols.msisdn),
                text(cols.id),
                text(cols.name),
                text(cols.dob),
                text(cols.sex),
            ) {
                (Some(msisdn), Some(id), Some(name), Some(dob), Some(sex)) => {
                    let id_ref = CitizenId::parse(id).ok().map(|i| id_ref(&spec.job_id, &i));
                    let sex_claim = match sex.trim() {
                        "" => Ok(None),
                        s => Sex::parse(s).map(Some).ok_or(()),
                    };
                    let raw = RawRequest {
                        request_id,
                        msisdn,
                        id_number: id,
                        full_name: name,
                        date_of_birth: dob,
                        sex: sex_claim.unwrap_or(None),
                        consent_ref: None,
                    };
                    let mut errors: Vec<String> = match VerifyInput::parse(&raw, today) {
                        Ok(_) => Vec::new(),
                        Err(v) => v.iter().map(|v| format!("{v} [{}]", v.code)).collect(),
                    };
                    if sex_claim.is_err() {
                        errors.push("sex: must be M or F [BAD_SEX]".into());
                    }
                    if errors.is_empty() {
                        batch.push(&raw, pb::Purpose::Cleanup);
                        let mut keep = |s: &str| {
                            kept.push_str(s);
                            kept.len() - s.len()..kept.len()
                        };
                        Entry::Remote {
                            row,
                            msisdn: keep(msisdn),
                            request_id: own_request_id.map(keep),
                            id_ref,
                        }
                    } else {
                        local!(errors.join("; "), id_ref)
                    }
                }
                _ => local!("row: is not valid UTF-8 [INVALID_UTF8]".into(), None),
            }
        };
        entries.push(entry);
        if entries.len() == spec.batch_size {
            seq += 1;
            let chunk = Chunk::new(
                seq,
                std::mem::replace(&mut entries, Vec::with_capacity(spec.batch_size)),
                std::mem::take(&mut kept),
                std::mem::replace(&mut batch, new_batch(seq + 1)),
            );
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    }
    if !entries.is_empty() {
        let _ = tx.blocking_send(Ok(Chunk::new(seq + 1, entries, kept, batch)));
    }
}

impl Chunk {
    fn new(seq: u64, entries: Vec<Entry>, text: String, batch: BatchEncoder) -> Self {
        let remote = batch.len() > 0;
        Chunk {
            seq,
            entries,
            text,
            batch: remote.then(|| batch.finish()),
            remote,
        }
    }
}

/// Output writer with the bookkeeping a checkpoint needs, and the report's
/// counts of every row in the output.
pub struct Output {
    path: PathBuf,
    file: BufWriter<File>,
    /// The row being written, reused for every row.
    line: Vec<u8>,
    pub cp: Checkpoint,
    last_sync: Instant,
    sync_every: Duration,
    /// Counted as rows are written, so that the report at the end of a job
    /// need not read the whole output back; a resumed job counts the rows
    /// already there when it opens the output.
    tally: Tally,
}

impl Output {
    /// Opens the output for `cp`: truncated to the checkpoint's length, or
    /// created with a header when starting afresh. It is synced and
    /// checkpointed every `sync_every` while answers arrive, and at the end.
    pub fn open(path: &Path, mut cp: Checkpoint, sync_every: Duration) -> Result<Self, CliError> {
        let io =
            |e: std::io::Error| CliError::Internal(format!("cannot write {}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let fresh = cp.output_bytes == 0;
        file.set_len(cp.output_bytes).map_err(io)?;
        let tally = if fresh {
            Tally::default()
        } else {
            file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
            super::report::tally(std::io::BufReader::with_capacity(1 << 20, &file))
                .map_err(|e| CliError::Data(format!("{}: {e}", path.display())))?
        };
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        let mut line = Vec::with_capacity(512);
        if fresh {
            csv_line(&mut line, &OUTPUT_COLUMNS);
            file.write_all(&line).map_err(io)?;
            file.flush().map_err(io)?;
            cp.output_bytes = file.get_ref().metadata().map_err(io)?.len();
            cp.rows_done = 0;
        }
        let mut out = Self {
            path: path.to_path_buf(),
            file,
            line,
            cp,
            last_sync: Instant::now(),
            sync_every,
            tally,
        };
        out.sync()?;
        Ok(out)
    }

    /// The counts of every row in the output.
    pub fn into_tally(self) -> Tally {
        self.tally
    }

    fn write(&mut self, fields: &[&str]) -> Result<(), CliError> {
        csv_line(&mut self.line, fields);
        self.file
            .write_all(&self.line)
            .map_err(|e| CliError::Internal(format!("cannot write {}: {e}", self.path.display())))
    }

    /// Makes everything written durable, then records it in the checkpoint.
    pub fn sync(&mut self) -> Result<(), CliError> {
        let io = |e: std::io::Error| CliError::Internal(format!("cannot write results: {e}"));
        self.file.flush().map_err(io)?;
        let f = self.file.get_ref();
        f.sync_data().map_err(io)?;
        self.cp.output_bytes = f.metadata().map_err(io)?.len();
        self.cp.decisions.clone_from(self.tally.decisions());
        self.cp.store(&self.path)?;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn maybe_sync(&mut self) -> Result<(), CliError> {
        if self.last_sync.elapsed() >= self.sync_every {
            self.sync()?;
        }
        Ok(())
    }

    fn local(
        &mut self,
        row: u64,
        msisdn: &str,
        request_id: &str,
        error: &str,
        id_ref: Option<u64>,
    ) -> Result<(), CliError> {
        let mut ref_s = [0; 16];
        let id_ref_s = id_ref_text(id_ref, &mut ref_s);
        let mut row_s = itoa::Buffer::new();
        self.write(&[
            row_s.format(row),
            msisdn,
            request_id,
            "INVALID",
            "",
            "",
            "",
            "",
            "",
            "",
            "CORRECT_INPUT",
            "INVALID_INPUT",
            "",
            error,
            id_ref_s,
        ])?;
        self.tally.add(&RowView {
            row,
            msisdn,
            decision: "INVALID",
            fields: [""; 4],
            name_tier: "",
            recommended_action: "CORRECT_INPUT",
            id_ref,
        });
        self.cp.rows_done = row;
        Ok(())
    }

    fn answer(
        &mut self,
        row: u64,
        msisdn: &str,
        id_ref: Option<u64>,
        r: &pb::VerifyResponse,
    ) -> Result<(), CliError> {
        let mut ref_s = [0; 16];
        let id_ref_s = id_ref_text(id_ref, &mut ref_s);
        let decision = convert::decision_name(r.decision);
        let tier = if r.name_tier == 0 {
            ""
        } else {
            convert::tier_name(r.name_tier)
        };
        let mut score_s = itoa::Buffer::new();
        let score = if r.name_tier == 0 {
            ""
        } else {
            score_s.format(r.name_score)
        };
        let error = r
            .violations
            .iter()
            .map(|v| format!("{}: {} [{}]", v.field, v.description, v.reason))
            .collect::<Vec<_>>()
            .join("; ");
        let fields = [r.id_number, r.full_name, r.date_of_birth, r.sex].map(convert::field_name);
        let action = convert::action_name(r.recommended_action);
        let mut row_s = itoa::Buffer::new();
        self.write(&[
            row_s.format(row),
            msisdn,
            &r.request_id,
            decision,
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            tier,
            score,
            action,
            &r.reasons.join(";"),
            &r.audit_id,
            &error,
            id_ref_s,
        ])?;
        self.tally.add(&RowView {
            row,
            msisdn,
            decision,
            fields,
            name_tier: tier,
            recommended_action: action,
            id_ref,
        });
        self.cp.rows_done = row;
        Ok(())
    }

    /// The checkpoint as of the last row written, with its decision counts
    /// taken from the report's.
    pub fn checkpoint(&mut self) -> &Checkpoint {
        self.cp.decisions.clone_from(self.tally.decisions());
        &self.cp
    }
}

/// Replaces `line` with one CSV record of `fields`, as the `csv` crate's
/// writer would write it (quoted only where a field holds a comma, a quote
/// or a line break; `\n` at the end), so outputs written by either read and
/// resume the same. Most fields are fixed names, numbers and ids, and the
/// crate's per-field state machine was a tenth of a job's CPU.
fn csv_line(line: &mut Vec<u8>, fields: &[&str]) {
    line.clear();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        let f = f.as_bytes();
        if f.iter().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
            line.push(b'"');
            for &b in f {
                if b == b'"' {
                    line.push(b'"');
                }
                line.push(b);
            }
            line.push(b'"');
        } else {
            line.extend_from_slice(f);
        }
    }
    if let [only] = fields
        && only.is_empty()
    {
        // A lone empty field would be an empty line, which readers skip.
        line.extend_from_slice(b"\"\"");
    }
    line.push(b'\n');
}

/// Opens a VerifyStream call that sends batches already encoded; answers
/// are decoded as the generated client would.
async fn verify_stream(
    channel: tonic::transport::Channel,
    batches: mpsc::Receiver<EncodedBatch>,
) -> Result<tonic::Response<tonic::Streaming<pb::VerifyBatchResult>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the gateway is not reachable: {e}")))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(batches));
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        pb::verification_server::SERVICE_NAME,
        "VerifyStream",
    ));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(VERIFY_STREAM_PATH);
    let codec = tonic_prost::ProstCodec::<EncodedBatch, pb::VerifyBatchResult>::default();
    grpc.streaming(request, path, codec).await
}

const VERIFY_STREAM_PATH: &str = "/simverify.v1.Verification/VerifyStream";

/// Runs one attempt: from the checkpoint to the end of the input, or until
/// something stops it. The output is synced before returning either way.
pub async fn attempt(
    spec: &JobSpec,
    out: &mut Output,
    channel: tonic::transport::Channel,
    cancel: &mut watch::Receiver<bool>,
    progress: &dyn Fn(&Checkpoint),
) -> Result<(), Stop> {
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Chunk, String>>(spec.window);
    let skip = out.cp.rows_done;
    let reader_spec = JobSpec {
        input: spec.input.clone(),
        output: spec.output.clone(),
        columns: spec.columns.clone(),
        job_id: spec.job_id.clone(),
        batch_size: spec.batch_size,
        window: spec.window,
    };
    let reader = tokio::task::spawn_blocking(move || read_chunks(&reader_spec, skip, chunk_tx));

    let (batch_tx, batch_rx) = mpsc::channel::<EncodedBatch>(spec.window);
    let mut results = match verify_stream(channel, batch_rx).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(classify(&s)),
    };

    // Chunks sent and not yet written, oldest first.
    let mut pending: VecDeque<Chunk> = VecDeque::new();
    let mut input_done = false;
    let mut batch_tx = Some(batch_tx);
    macro_rules! or_stop {
        ($l:lifetime, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => break $l Err(Stop::Fatal(e)),
            }
        };
    }
    let outcome: Result<(), Stop> = 'main: loop {
        // Write every chunk at the head that needs no answer.
        while pending.front().is_some_and(|c| !c.remote) {
            let c = pending.pop_front().expect("checked");
            for e in &c.entries {
                if let Entry::Local {
                    row,
                    msisdn,
                    request_id,
                    error,
                    id_ref,
                } = e
                {
                    or_stop!('main, out.local(*row, msisdn, request_id, error, *id_ref));
                }
            }
        }
        if input_done && pending.is_empty() {
            break Ok(());
        }
        let awaiting = pending.iter().filter(|c| c.remote).count();
        tokio::select! {
            biased;
            _ = cancel.changed() => break Err(Stop::Interrupted),
            next = chunk_rx.recv(), if !input_done && awaiting < spec.window => match next {
                None => {
                    input_done = true;
                    batch_tx = None;
                }
                Some(Err(e)) => break Err(Stop::Fatal(CliError::Data(e))),
                Some(Ok(mut chunk)) => {
                    if let Some(batch) = chunk.batch.take() {
                        let Some(tx) = &batch_tx else { unreachable!("input not done") };
                        if tx.send(batch).await.is_err() {
                            // The call has ended; its status (e.g. a batch the
                            // gateway can never accept) says whether a retry helps.
                            break Err(ended_call_status(&mut results).await);
                        }
                    }
                    pending.push_back(chunk);
                }
            },
            answer = results.next(), if awaiting > 0 => match answer {
                None => break Err(Stop::Transient { reason: "the gateway closed the stream".into(), after: None }),
                Some(Err(status)) => break Err(classify(&status)),
                Some(Ok(result)) => {
                    let chunk = pending.pop_front().expect("an answer is due");
                    if result.batch_seq != chunk.seq {
                        break Err(Stop::Fatal(CliError::Internal(format!(
                            "the gateway answered batch {} when {} was due", result.batch_seq, chunk.seq
                        ))));
                    }
                    let mut answers = result.results.iter();
                    for e in &chunk.entries {
                        match e {
                            Entry::Local { row, msisdn, request_id, error, id_ref } => {
                                or_stop!('main, out.local(*row, msisdn, request_id, error, *id_ref));
                            }
                            Entry::Remote { row, msisdn, request_id, id_ref } => {
                                let asked = |a: &&pb::VerifyResponse| match request_id {
                                    Some(r) => a.request_id == chunk.text(r),
                                    None => is_derived_request_id(&a.request_id, &spec.job_id, *row),
                                };
                                let Some(a) = answers.next().filter(asked) else {
                                    break;
                                };
                                or_stop!('main, out.answer(*row, chunk.text(msisdn), *id_ref, a));
                            }
                        }
                    }
                    if out.cp.rows_done != chunk.entries.last().map_or(0, Entry::row) {
                        break Err(Stop::Fatal(CliError::Internal(
                            "the gateway's answers do not match the requests sent".into(),
                        )));
                    }
                    or_stop!('main, out.maybe_sync());
                    progress(out.checkpoint());
                }
            },
        }
    };
    drop(batch_tx);
    drop(chunk_rx);
    let _ = reader.await;
    out.sync().map_err(Stop::Fatal)?;
    progress(out.checkpoint());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_the_csv_crate(fields: &[&str]) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
        w.write_record(fields).unwrap();
        w.into_inner().unwrap()
    }

    proptest::proptest! {
        /// Outputs written before and after the hand-written encoder must
        /// read (and resume) the same: same bytes as the crate's writer.
        #[test]
        fn output_rows_are_written_as_the_csv_crate_writes_them(
            fields in proptest::collection::vec("[a-zA-Zđ0-9 ,\"\r\n;:-]{0,12}", 1..16)
        ) {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            let mut line = Vec::new();
            csv_line(&mut line, &fields);
            proptest::prop_assert_eq!(line, by_the_csv_crate(&fields));
        }
    }

    #[test]
    fn a_lone_empty_field_is_quoted_like_the_csv_crate_does() {
        let mut line = Vec::new();
        csv_line(&mut line, &[""]);
        assert_eq!(line, by_the_csv_crate(&[""]));
        csv_line(&mut line, &OUTPUT_COLUMNS);
        assert_eq!(line, by_the_csv_crate(&OUTPUT_COLUMNS));
    }
}
