//! Importing population extracts into the mirror.
//!
//! A reader thread parses, validates and hashes rows (CPU work) while the
//! async side writes chunks to the store (I/O), so the two overlap. Bad rows
//! are reported by line number and skipped; the rest is imported.

use std::io::Read;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::clock;
use crate::domain::{Identity, ImportStatus, KeyedHasher, LookupKey, MirrorRecord};
use crate::store::{BulkInsert, ImportStats, Store, StoreError};

/// Rows per store transaction (per upsert statement on PostgreSQL).
const CHUNK_ROWS: usize = 5000;
/// Rows per bulk insert (after the first, which is one chunk). Each ends
/// with a commit, during which the database waits: with one per 5,000 rows,
/// PostgreSQL was busy 75–88% of an import, and SQLite wrote each page a
/// chunk touched to its WAL once per chunk. Also what the import holds in
/// memory to redo through the upsert if PostgreSQL finds a key that exists:
/// about 30 MB.
const BULK_ROWS: usize = 100_000;
/// How long a bulk insert stays open at most (about 100,000 rows on SQLite
/// at full speed): other writers to a SQLite file wait for it.
const BULK_OPEN_FOR: Duration = Duration::from_secs(3);
/// Rejected rows kept in the report (all are counted).
const MAX_REPORTED_REJECTS: usize = 10_000;

pub const REQUIRED_COLUMNS: [&str; 4] = ["id_number", "full_name", "date_of_birth", "sex"];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file has no header row")]
    Empty,
    #[error(
        "the header lacks the column `{0}` (expected id_number,full_name,date_of_birth,sex,status)"
    )]
    MissingColumn(&'static str),
    #[error("cannot read the file: {0}")]
    Read(#[from] csv::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A skipped row: where, which field, and why — never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: u64,
    pub field: &'static str,
    pub code: &'static str,
    pub description: String,
}

#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub version: i64,
    pub rows_read: u64,
    /// Rows inserted or changed.
    pub changed: u64,
    /// Valid rows identical to what the mirror already had.
    pub unchanged: u64,
    pub deleted: u64,
    pub rejected: u64,
    /// The first rejected rows, in file order.
    pub rejects: Vec<RejectedRow>,
}

impl ImportReport {
    /// Counts `valid` rows written, of which `changed` changed something.
    fn count(&mut self, valid: usize, changed: u64) {
        self.changed += changed;
        self.unchanged += valid as u64 - changed.min(valid as u64);
    }
}

enum Chunk {
    Rows {
        upserts: Vec<(LookupKey, MirrorRecord)>,
        deletes: Vec<LookupKey>,
        rows_read: u64,
    },
    Rejected(RejectedRow),
}

/// The import's bulk path: the open bulk insert and what it carries until
/// it commits.
#[derive(Default)]
struct Bulk {
    /// The open insert and when it began: it holds a write lock (SQLite) or
    /// a connection and a statement (PostgreSQL), so it ends after
    /// `BULK_OPEN_FOR` even if the input is slow to arrive.
    open: Option<(BulkInsert, Instant)>,
    /// The rows sent, kept where the store may refuse them all (PostgreSQL),
    /// so that they can be redone through the upsert.
    sent: Vec<Vec<(LookupKey, MirrorRecord)>>,
    rows: usize,
    /// Whether an insert has committed: the first is one chunk, so that an
    /// import over an existing mirror learns at once that it must upsert.
    committed: bool,
    /// Whether the store refused an insert (a key existed): the rest of the
    /// import goes through the upsert.
    refused: bool,
}

impl Bulk {
    async fn send(
        &mut self,
        store: &Store,
        rows: Vec<(LookupKey, MirrorRecord)>,
    ) -> Result<(), StoreError> {
        let (open, _) = match &mut self.open {
            Some(open) => open,
            None => self
                .open
                .insert((store.begin_bulk_insert().await?, Instant::now())),
        };
        open.send(&rows, clock::now_micros()).await?;
        self.rows += rows.len();
        if open.may_refuse() {
            self.sent.push(rows);
        }
        Ok(())
    }

    fn full(&self) -> bool {
        let limit = if self.committed {
            BULK_ROWS
        } else {
            CHUNK_ROWS
        };
        self.rows >= limit || self.deadline().is_some_and(|d| d <= Instant::now())
    }

    fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|(_, since)| *since + BULK_OPEN_FOR)
    }

    /// Commits the open insert, if any. If the store refused a key that
    /// existed already, nothing was written: its chunks go through the
    /// upsert, in the order read so that the last row for a key still wins,
    /// and so does the rest of the import.
    async fn finish(&mut self, store: &Store, report: &mut ImportReport) -> Result<(), StoreError> {
        let Some((open, _)) = self.open.take() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut self.rows);
        let sent = std::mem::take(&mut self.sent);
        if let Some(n) = open.finish().await? {
            report.count(rows, n);
            self.committed = true;
            return Ok(());
        }
        self.refused = true;
        for rows in sent {
            let changed = store.upsert_records(&rows, clock::now_micros()).await?;
            report.count(rows.len(), changed);
        }
        Ok(())
    }
}

struct Columns {
    id: usize,
    name: usize,
    dob: usize,
    sex: usize,
    status: Option<usize>,
    count: usize,
}

fn columns(header: &csv::ByteRecord) -> Result<Columns, ImportError> {
    let names: Vec<String> = header
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let find = |c: &'static str| {
        names
            .iter()
            .position(|n| n == c)
            .ok_or(ImportError::MissingColumn(c))
    };
    Ok(Columns {
        id: find("id_number")?,
        name: find("full_name")?,
        dob: find("date_of_birth")?,
        sex: find("sex")?,
        status: names.iter().position(|n| n == "status"),
        count: names.len(),
    })
}

/// Imports a population CSV (`id_number,full_name,date_of_birth,sex,status`).
/// `progress` is called with the number of rows read so far.
pub async fn import_csv<R: Read + Send + 'static>(
    store: &Store,
    hasher: &KeyedHasher,
    input: R,
    source: &str,
    progress: impl Fn(u64),
) -> Result<ImportReport, ImportError> {
    store
        .check_key(hasher.key_id(), &hasher.fingerprint())
        .await?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(input);
    let header = reader.byte_headers()?.clone();
    if header.is_empty() {
        return Err(ImportError::Empty);
    }
    let cols = columns(&header)?;
    let version = store.begin_import(source).await?;

    let (tx, mut rx) = mpsc::channel::<Result<Chunk, csv::Error>>(4);
    let hasher = hasher.clone();
    let parser = std::thread::spawn(move || parse_rows(reader, cols, hasher, version, tx));

    let mut report = ImportReport {
        version,
        ..Default::default()
    };
    // Rows go in through the store's bulk path (see `BulkInsert`) until it
    // refuses a key that exists already (PostgreSQL's `COPY`, which only
    // adds records: a first import), then through the upsert.
    let mut bulk = Bulk::default();
    loop {
        let next = match bulk.deadline() {
            // Input slower than the open insert may last: commit what it has.
            Some(d) => match tokio::time::timeout_at(d.into(), rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    bulk.finish(store, &mut report).await?;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(msg) = next else { break };
        match msg? {
            Chunk::Rejected(r) => {
                report.rejected += 1;
                if report.rejects.len() < MAX_REPORTED_REJECTS {
                    report.rejects.push(r);
                }
            }
            Chunk::Rows {
                upserts,
                deletes,
                rows_read,
            } => {
                if !bulk.refused && !upserts.is_empty() {
                    bulk.send(store, upserts).await?;
                    if bulk.full() {
                        bulk.finish(store, &mut report).await?;
                    }
                } else {
                    let changed = store.upsert_records(&upserts, clock::now_micros()).await?;
                    report.count(upserts.len(), changed);
                }
                if !deletes.is_empty() {
                    // The rows read before a deletion are committed before
                    // it runs (within a chunk, its upserts come first).
                    bulk.finish(store, &mut report).await?;
                    report.deleted += store.delete_records(&deletes, version).await?;
                }
                report.rows_read = rows_read;
                progress(rows_read);
            }
        }
    }
    bulk.finish(store, &mut report).await?;
    let _ = parser.join();
    let stats = ImportStats {
        upserted: report.changed,
        deleted: report.deleted,
        rejected: report.rejected,
    };
    store
        .finish_import(version, stats, clock::now_micros())
        .await?;
    Ok(report)
}

fn parse_rows<R: Read>(
    mut reader: csv::Reader<R>,
    cols: Columns,
    hasher: KeyedHasher,
    version: i64,
    tx: mpsc::Sender<Result<Chunk, csv::Error>>,
) {
    let today = clock::today_vn();
    let mut rec = csv::ByteRecord::new();
    let mut upserts = Vec::with_capacity(CHUNK_ROWS);
    let mut deletes = Vec::new();
    let mut rows_read = 0u64;
    loop {
        match reader.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        rows_read += 1;
        let line = rec.position().map_or(rows_read + 1, |p| p.line());
        let reject = |field: &'static str, code: &'static str, description: String| {
            Chunk::Rejected(RejectedRow {
                line,
                field,
                code,
                description,
            })
        };
        if rec.len() != cols.count {
            let msg = format!("has {} fields; the header has {}", rec.len(), cols.count);
            if tx
                .blocking_send(Ok(reject("row", "WRONG_FIELD_COUNT", msg)))
                .is_err()
            {
                return;
            }
            continue;
        }
        let text = |i: usize| std::str::from_utf8(&rec[i]);
        let fields = (
            text(cols.id),
            text(cols.name),
            text(cols.dob),
            text(cols.sex),
        );
        let status = cols.status.map_or(Ok(""), text);
        let (Ok(id), Ok(name), Ok(dob), Ok(sex), Ok(status)) =
            (fields.0, fields.1, fields.2, fields.3, status)
        else {
            let r = reject("row", "INVALID_UTF8", "is not valid UTF-8".to_owned());
            if tx.blocking_send(Ok(r)).is_err() {
                return;
            }
            continue;
        };
        match Identity::parse(id, name, dob, sex, status, today) {
            Ok(identity) if identity.status == ImportStatus::Deleted => {
                deletes.push(hasher.lookup_key(&identity.id));
            }
            Ok(identity) => upserts.push(identity.to_record(&hasher, version)),
            Err(e) => {
                let v = e.0;
                if tx
                    .blocking_send(Ok(reject(v.field.as_str(), v.code, v.description)))
                    .is_err()
                {
                    return;
                }
            }
        }
        if upserts.len() + deletes.len() >= CHUNK_ROWS {
            let chunk = Chunk::Rows {
                upserts: std::mem::replace(&mut upserts, Vec::with_capacity(CHUNK_ROWS)),
                deletes: std::mem::take(&mut deletes),
                rows_read,
            };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    }
    let _ = tx.blocking_send(Ok(Chunk::Rows {
        upserts,
        deletes,
        rows_read,
    }));
}
