//! The audit journal: durability first, indexing after.
//!
//! An answer may leave the gateway once its audit record is durable. Writing
//! each record into the database's audit table (ten indexes, a Merkle
//! position) costs tens of microseconds; appending it to a local file costs
//! well under one. So records are appended to segment files here, one fsync
//! per group of submissions (group commit), and acknowledged; a background
//! indexer then moves them into the store in large transactions, where their
//! log positions are assigned, recording in the same transaction how far it
//! got. After a crash the indexer resumes from that mark, so every
//! acknowledged record reaches the store exactly once.
//!
//! Layout of the directory:
//! - `JOURNAL`: which journal this is and which database's log it feeds;
//! - `LOCK`: held exclusively by the gateway using the journal;
//! - `<first record number, 20 digits>.seg`: segments of framed records.
//!
//! A segment starts with a header (magic, version, journal id, number of its
//! first record); each record is `len u32 | crc32c u32 | body`, the body
//! being [`AuditRecord::encode_body`]. Only the tail of the newest segment
//! can be torn (its fsync never returned, so nobody was told it was
//! written); opening the journal cuts it off.
//!
//! The writer zero-fills the segment ahead of its records, a few MiB at a
//! time, so that most groups overwrite blocks the file already owns: the
//! group's `fdatasync` then writes data only, where an append also commits
//! the file's new size and block allocation to the filesystem's journal
//! (about 30% longer and 20% more system time per fsync, measured here;
//! see BENCHMARKS.md). A zero length ends a segment's records, so the
//! zeros are never mistaken for one.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::AuditError;
use crate::domain::AuditRecord;
use crate::store::{JournalMark, Store, StoreError, TileBuilder};

const MAGIC: &[u8; 4] = b"SVAJ";
const VERSION: u8 = 1;
const HEADER_LEN: u64 = 4 + 1 + 16 + 8;
const FRAME_LEN: usize = 8;
/// A record body is a few hundred bytes; anything near this is damage.
const MAX_BODY: u32 = 64 * 1024;
const META_FILE: &str = "JOURNAL";
const LOCK_FILE: &str = "LOCK";
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of a frame body. x86-64 CPUs since 2008 compute it in hardware
/// (SSE 4.2), eight bytes per instruction; the table version was 2% of a
/// warm stream's CPU, paid once when a record is journaled and once when it
/// is indexed.
fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU was just found to have SSE 4.2, the only feature
        // `crc32c_sse42` requires.
        return unsafe { crc32c_sse42(data) };
    }
    CRC.checksum(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let (words, rest) = data.as_chunks::<8>();
    let mut crc = u64::from(u32::MAX);
    for w in words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(*w));
    }
    // The instruction leaves the 32-bit CRC in the low half.
    let mut crc = crc as u32;
    for &b in rest {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("audit journal {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit journal {0}: another process holds it (two gateways cannot share one journal directory)"
    )]
    Locked(PathBuf),
    #[error(
        "audit journal {dir}: it feeds the audit log {journal_log} but this database's log is {store_log}; \
         point audit.journal_dir at a directory of its own, or start the gateway on the database that journal belongs to"
    )]
    OtherLog {
        dir: PathBuf,
        journal_log: String,
        store_log: String,
    },
    #[error("audit journal {dir}: {what}")]
    Damaged { dir: PathBuf, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How the journal is kept.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes: u64,
    /// Records durable but not yet indexed before appends wait for the
    /// indexer: bounds the disk a burst may use and how stale queries get.
    pub max_backlog: u64,
    /// Records per store transaction when indexing at full speed.
    pub index_batch: usize,
    /// Share of the time the indexer may work while answers are being
    /// journaled: indexing yields the CPU to answering during bursts and
    /// catches up at full speed when they end, when it has fallen
    /// `max_lag` behind, when the backlog passes half its limit, or when an
    /// audit read is waiting for it.
    pub busy_share: f64,
    /// How far behind (the age of the oldest record not yet in the store,
    /// at most) indexing may fall while yielding.
    pub max_lag: Duration,
    /// While the runtime's workers are saturated, group commits begin at
    /// most this often, so that more answers share each fsync (see
    /// [`GroupPacer`]). Zero: each group begins as soon as the previous
    /// one is durable.
    pub busy_group_interval: Duration,
    /// Where the writer reads the workers' busy time: the runtime's own
    /// metrics. Tests replace it, since how busy a shared machine lets a
    /// test's runtime be is not up to the test.
    pub(crate) read_busy: BusyReading,
}

/// Reads the tokio workers' total busy time and their number.
pub(crate) type BusyReading = fn(&tokio::runtime::RuntimeMetrics) -> (Duration, usize);

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_backlog: 5_000_000,
            index_batch: 20_000,
            busy_share: 0.05,
            max_lag: Duration::from_secs(10),
            busy_group_interval: Duration::from_millis(1),
            read_busy: workers_busy,
        }
    }
}

/// Journal-local record numbers: how many records were ever appended
/// (durable) and how many of those are in the store (indexed).
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    journal_id: String,
    /// Published by the writer; closed when the writer stops.
    durable: watch::Receiver<u64>,
    indexed: watch::Sender<u64>,
    /// First record number of each segment on disk, oldest first.
    segments: Mutex<VecDeque<u64>>,
    /// When the writer last made records durable, in µs since `epoch`.
    last_append_us: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// Audit reads waiting for the indexer to catch up; while there are
    /// any, it does not yield.
    readers: std::sync::atomic::AtomicUsize,
    /// Wakes a yielding indexer when a reader starts waiting.
    reader_came: tokio::sync::Notify,
}

/// The writer counts as busy this long after its last append.
const BUSY_WINDOW: Duration = Duration::from_millis(50);

impl Shared {
    /// A journal's shared state, nothing appended since it opened.
    fn new(
        dir: PathBuf,
        journal_id: String,
        durable: watch::Receiver<u64>,
        indexed: u64,
        segments: VecDeque<u64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dir,
            journal_id,
            durable,
            indexed: watch::Sender::new(indexed),
            segments: Mutex::new(segments),
            last_append_us: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            readers: std::sync::atomic::AtomicUsize::new(0),
            reader_came: tokio::sync::Notify::new(),
        })
    }

    fn busy(&self) -> bool {
        let last = self
            .last_append_us
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = self.epoch.elapsed().as_micros() as u64;
        now.saturating_sub(last) < BUSY_WINDOW.as_micros() as u64
    }
}

impl Shared {
    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn damaged(&self, what: String) -> JournalError {
        JournalError::Damaged {
            dir: self.dir.clone(),
            what,
        }
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Appends one framed record per entry of `records` to `out`.
pub fn encode_records(records: &[AuditRecord], out: &mut Vec<u8>) {
    for r in records {
        let at = out.len();
        out.extend([0u8; FRAME_LEN]);
        r.encode_body(out);
        let body = &out[at + FRAME_LEN..];
        let len = body.len() as u32;
        let crc = crc32c(body);
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    }
}

struct Submission {
    bytes: Vec<u8>,
    count: u64,
    deadline: Option<Instant>,
    /// The outcome, and the submission's bytes handed back: freed by the
    /// task that allocated them rather than by the writer thread. mimalloc
    /// frees a block of another thread's page through an atomic list that
    /// the owning thread must later collect (visible in unary profiles as
    /// the collection inside the next `append`'s allocation).
    done: oneshot::Sender<(Result<(), AuditError>, Vec<u8>)>,
}

impl Submission {
    fn answer(self, result: Result<(), AuditError>) {
        let _ = self.done.send((result, self.bytes));
    }
}

/// Answers every submission of a group with the same outcome.
fn answer_all(group: impl IntoIterator<Item = Submission>, result: &Result<(), AuditError>) {
    for s in group {
        s.answer(result.clone());
    }
}

/// Handle for appending to the journal; cheap to clone. When every handle
/// is dropped the writer finishes what is queued and stops, and the indexer
/// then drains the journal into the store (see [`JournalTasks`]).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
}

/// The journal's background work: the writer thread and the indexer task.
pub struct JournalTasks {
    pub indexer: tokio::task::JoinHandle<()>,
}

impl Journal {
    /// Opens (or creates) the journal in `cfg.dir` for `store`'s audit log,
    /// cuts off a torn tail, and starts the writer thread and the indexer.
    pub async fn open(
        store: Store,
        cfg: JournalConfig,
    ) -> Result<(Self, JournalTasks), JournalError> {
        let log_id = store.audit_log_id().await?;
        let dir = cfg.dir.clone();
        let opened = tokio::task::spawn_blocking(move || open_dir(&dir, &log_id))
            .await
            .map_err(|e| JournalError::Io {
                dir: cfg.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let indexed = store
            .audit_journal_progress(&opened.journal_id)
            .await?
            .unwrap_or(0);
        let oldest = opened.segments.front().copied().unwrap_or(opened.durable);
        if indexed > opened.durable || indexed < oldest {
            return Err(JournalError::Damaged {
                dir: cfg.dir.clone(),
                what: format!(
                    "the database has indexed {indexed} of its records, but the journal holds records {oldest}..{}; \
                     its files were removed or replaced",
                    opened.durable
                ),
            });
        }
        if opened.durable > indexed {
            tracing::info!(
                dir = %cfg.dir.display(),
                records = opened.durable - indexed,
                "audit journal holds records not yet indexed; indexing them"
            );
        }
        let (durable_tx, durable_rx) = watch::channel(opened.durable);
        let shared = Shared::new(
            cfg.dir.clone(),
            opened.journal_id,
            durable_rx,
            indexed,
            opened.segments,
        );
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            shared: shared.clone(),
            durable: durable_tx,
            file: opened.tail,
            len: opened.tail_len,
            allocated: opened.tail_allocated,
            segment_bytes: cfg.segment_bytes,
            max_backlog: cfg.max_backlog,
            // Counted from now: the runtime's busy time before the journal
            // opened says nothing about the load it will see.
            pacer: GroupPacer::new(
                cfg.busy_group_interval,
                Instant::now(),
                (cfg.read_busy)(&tokio::runtime::Handle::current().metrics()).0,
            ),
            read_busy: cfg.read_busy,
            release: spawn_releaser(),
            _lock: opened.lock,
        };
        let rt = tokio::runtime::Handle::current();
        let writer_thread = std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || writer.run(rx, rt))
            .map_err(|e| JournalError::Io {
                dir: cfg.dir.clone(),
                source: e,
            })?;
        let policy = IndexPolicy {
            batch: cfg.index_batch,
            busy_share: cfg.busy_share.clamp(0.01, 1.0),
            eager_above: cfg.max_backlog / 2,
            max_lag: cfg.max_lag,
        };
        let indexer = tokio::spawn(index(store, shared.clone(), policy, writer_thread));
        Ok((Self { tx, shared }, JournalTasks { indexer }))
    }

    /// Appends records and returns once they are durable. Records still
    /// queued when `deadline` passes are dropped, not written.
    pub async fn append(
        &self,
        records: &[AuditRecord],
        deadline: Option<Instant>,
    ) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(records.len() * 256);
        encode_records(records, &mut bytes);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Submission {
                bytes,
                count: records.len() as u64,
                deadline,
                done,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        // The bytes come back to be freed here (see `Submission::done`).
        let (result, _bytes) = wait.await.map_err(|_| AuditError::Stopped)?;
        result
    }

    /// Waits until every record durable when called is in the store, or
    /// `limit` passes; returns whether it caught up.
    pub async fn synced(&self, limit: Duration) -> bool {
        let target = *self.shared.durable.borrow();
        let mut indexed = self.shared.indexed.subscribe();
        if *indexed.borrow() >= target {
            return true;
        }
        // Someone is waiting for the store to be current: the indexer stops
        // yielding until this read is done.
        let _waiting = ReaderWaiting::new(&self.shared);
        tokio::time::timeout(limit, indexed.wait_for(|i| *i >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records durable in the journal but not yet in the store.
    pub fn backlog(&self) -> u64 {
        self.shared
            .durable
            .borrow()
            .saturating_sub(*self.shared.indexed.borrow())
    }
}

struct Opened {
    journal_id: String,
    lock: File,
    segments: VecDeque<u64>,
    durable: u64,
    tail: File,
    tail_len: u64,
    /// Bytes the tail segment owns: `tail_len` and the zeros after it.
    tail_allocated: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: String,
    journal_id: String,
    log_id: String,
}

fn open_dir(dir: &Path, log_id: &str) -> Result<Opened, JournalError> {
    let io = |source| JournalError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let damaged = |what: String| JournalError::Damaged {
        dir: dir.to_path_buf(),
        what,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir.into())),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let mut segments: Vec<u64> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let name = e.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg") {
            let n = n
                .parse::<u64>()
                .map_err(|_| damaged(format!("unexpected file {name}")))?;
            segments.push(n);
        }
    }
    segments.sort_unstable();

    let meta_path = dir.join(META_FILE);
    let meta: Meta = match std::fs::read(&meta_path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| damaged(format!("{META_FILE} is unreadable: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !segments.is_empty() {
                return Err(damaged(format!(
                    "{META_FILE} is missing but segments exist"
                )));
            }
            let meta = Meta {
                format: "simverify audit journal 1".into(),
                journal_id: uuid::Uuid::new_v4().simple().to_string(),
                log_id: log_id.to_owned(),
            };
            write_atomically(
                &meta_path,
                &serde_json::to_vec_pretty(&meta).expect("serialisable"),
            )
            .map_err(io)?;
            meta
        }
        Err(e) => return Err(io(e)),
    };
    if meta.log_id != log_id {
        return Err(JournalError::OtherLog {
            dir: dir.into(),
            journal_log: meta.log_id,
            store_log: log_id.to_owned(),
        });
    }
    let id = journal_id_bytes(&meta.journal_id).ok_or_else(|| damaged("bad journal id".into()))?;

    // Only the newest segment may end in a torn write; older ones were
    // synced before the next was begun.
    let (tail, tail_len, tail_allocated, durable) = match segments.last().copied() {
        None => {
            let first = 0;
            let file = create_segment(dir, &id, first).map_err(io)?;
            segments.push(first);
            (file, HEADER_LEN, HEADER_LEN, first)
        }
        Some(first) => {
            let path = segment_path(dir, first);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            check_header(&mut file, &id, first)
                .map_err(|what| damaged(format!("{}: {what}", path.display())))?;
            let (count, good_len) = scan(&mut file).map_err(io)?;
            let actual = file.metadata().map_err(io)?.len();
            let mut allocated = actual.max(good_len);
            // Zeros after the records are space the writer filled ahead;
            // anything else is a write that never became durable.
            if actual > good_len && !zeros_from(&mut file, good_len).map_err(io)? {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = actual - good_len,
                    "cutting off a torn audit journal tail (a write whose fsync never returned)"
                );
                file.set_len(good_len).map_err(io)?;
                file.sync_all().map_err(io)?;
                allocated = good_len;
            }
            file.seek(SeekFrom::Start(good_len)).map_err(io)?;
            (file, good_len, allocated, first + count)
        }
    };
    Ok(Opened {
        journal_id: meta.journal_id,
        lock,
        segments: segments.into(),
        durable,
        tail,
        tail_len,
        tail_allocated,
    })
}

/// Whether everything in `f` from `from` to its end is zero bytes.
fn zeros_from(f: &mut File, from: u64) -> std::io::Result<bool> {
    f.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

fn journal_id_bytes(id: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(id).ok().map(|u| *u.as_bytes())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_segment(dir: &Path, id: &[u8; 16], first: u64) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(segment_path(dir, first))?;
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend(MAGIC);
    h.push(VERSION);
    h.extend(id);
    h.extend(first.to_be_bytes());
    f.write_all(&h)?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

/// Writes zero bytes into `f` from `from` to `to`, leaving its position.
fn fill_zeros(f: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        f.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn check_header(f: &mut File, id: &[u8; 16], first: u64) -> Result<(), String> {
    let mut h = [0u8; HEADER_LEN as usize];
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.read_exact(&mut h)
        .map_err(|_| "the segment header is incomplete".to_owned())?;
    if &h[..4] != MAGIC || h[4] != VERSION {
        return Err("not an audit journal segment".into());
    }
    if &h[5..21] != id {
        return Err("the segment belongs to another journal".into());
    }
    if h[21..29] != first.to_be_bytes() {
        return Err("the segment's first record number does not match its name".into());
    }
    Ok(())
}

/// Counts the intact records after the header; returns (count, length of
/// the segment up to the end of the last intact record).
fn scan(f: &mut File) -> std::io::Result<(u64, u64)> {
    f.seek(SeekFrom::Start(HEADER_LEN))?;
    let mut r = BufReader::with_capacity(1 << 20, &mut *f);
    let (mut count, mut len) = (0u64, HEADER_LEN);
    let mut body = Vec::new();
    loop {
        match read_frame(&mut r, &mut body) {
            Ok(true) => {
                count += 1;
                len += (FRAME_LEN + body.len()) as u64;
            }
            Ok(false) => return Ok((count, len)),
            // Damage at the tail is a torn write: the end of what was durable.
            Err(FrameError::Damaged(_)) => return Ok((count, len)),
            Err(FrameError::Io(e)) => return Err(e),
        }
    }
}

enum FrameError {
    Io(std::io::Error),
    Damaged(&'static str),
}

/// Reads one frame's body into `body`; `Ok(false)` at a clean end of file.
fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut frame = [0u8; FRAME_LEN];
    let mut got = 0;
    while got < FRAME_LEN {
        match r.read(&mut frame[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Damaged("a record header is cut short")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(frame[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_BODY {
        return Err(FrameError::Damaged("a record length is impossible"));
    }
    body.resize(len as usize, 0);
    r.read_exact(body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Damaged("a record is cut short"),
        _ => FrameError::Io(e),
    })?;
    if crc32c(body) != crc {
        return Err(FrameError::Damaged("a record's checksum does not match"));
    }
    Ok(true)
}

struct Writer {
    shared: Arc<Shared>,
    durable: watch::Sender<u64>,
    file: File,
    len: u64,
    /// Bytes of `file` written so far, records and the zeros after them.
    allocated: u64,
    segment_bytes: u64,
    max_backlog: u64,
    pacer: GroupPacer,
    read_busy: BusyReading,
    /// Where written groups go to be answered (see [`spawn_releaser`]).
    release: mpsc::UnboundedSender<Written>,
    /// Held for the life of the writer: one process per journal.
    _lock: File,
}

/// A written group and the outcome for all of its submissions.
type Written = (Vec<Submission>, Result<(), AuditError>);

/// Starts the task that answers written groups.
///
/// Answering from a runtime task rather than the writer thread puts a
/// group's woken calls in that worker's own run queue instead of the
/// runtime's shared injection queue: they then run one after the other,
/// and the connections they answer on write their answers together
/// (`grpc::coalesce`), rather than as each call is fetched from the shared
/// queue between other work. The channel is unbounded so that the writer
/// thread never waits on the runtime; it holds at most the groups written
/// while the task waits for a worker.
fn spawn_releaser() -> mpsc::UnboundedSender<Written> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Written>();
    tokio::spawn(async move {
        while let Some((group, result)) = rx.recv().await {
            answer_all(group, &result);
        }
    });
    tx
}

/// Most bytes gathered into one write (and one fsync).
const MAX_GROUP_BYTES: usize = 16 << 20;

/// How far ahead of its records a segment is zero-filled at a time. A
/// group that extends the fill writes this much more (a few ms on the
/// project's disk); at 40,000 answers/s that is one group in ~40.
const FILL_AHEAD: u64 = 4 << 20;

/// The share of a window the runtime's workers must be busy for answering
/// to count as CPU-bound. Measured on 2 cores: 0.4–0.7 at 16 calls in
/// flight, 0.95–1.0 at 256.
const SATURATED: f64 = 0.85;
/// How often the workers' busy time is sampled.
const SATURATION_WINDOW: Duration = Duration::from_millis(20);

/// Spaces group commits while answering is CPU-bound.
///
/// Each fsync costs CPU besides its wait: on the project's machine about
/// 40 µs of system time, device notifications and interrupts, and the
/// wake-ups of the writer and of the answers it releases. When the workers
/// have idle time, beginning the next group at once is free and gives the
/// lowest latency. When they are saturated, every fsync is CPU taken from
/// answering: starting groups at most every `interval` lets more answers
/// share each one, for at most `interval` more latency on answers that were
/// already waiting milliseconds for CPU (see BENCHMARKS.md for what it
/// gained). The same interval applied always cost the 16-in-flight shape
/// 40% of its throughput, hence the saturation test.
#[derive(Debug)]
struct GroupPacer {
    interval: Duration,
    window_began: Instant,
    busy_then: Duration,
    saturated: bool,
    last_group: Option<Instant>,
}

impl GroupPacer {
    /// `busy` is the workers' total busy time at `now`.
    fn new(interval: Duration, now: Instant, busy: Duration) -> Self {
        Self {
            interval,
            window_began: now,
            busy_then: busy,
            saturated: false,
            last_group: None,
        }
    }

    /// Takes a reading of the workers' total busy time and their number
    /// (`read`, called only when a window has passed).
    fn observe(&mut self, now: Instant, read: impl FnOnce() -> (Duration, usize)) {
        if self.interval.is_zero() {
            return;
        }
        let wall = now.saturating_duration_since(self.window_began);
        if wall < SATURATION_WINDOW {
            return;
        }
        let (busy, workers) = read();
        let worked = busy.saturating_sub(self.busy_then).as_secs_f64();
        self.saturated = worked >= SATURATED * wall.as_secs_f64() * workers.max(1) as f64;
        self.window_began = now;
        self.busy_then = busy;
    }

    /// How long to wait at `now` before gathering the next group.
    fn wait(&self, now: Instant) -> Duration {
        match self.last_group {
            Some(last) if self.saturated => (last + self.interval).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    fn group_began(&mut self, now: Instant) {
        self.last_group = Some(now);
    }
}

/// The runtime's workers' busy time so far, summed, and their number.
fn workers_busy(metrics: &tokio::runtime::RuntimeMetrics) -> (Duration, usize) {
    let n = metrics.num_workers();
    (
        (0..n).map(|w| metrics.worker_total_busy_duration(w)).sum(),
        n,
    )
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Submission>, rt: tokio::runtime::Handle) {
        let mut durable = *self.shared.durable.borrow();
        let mut indexed = self.shared.indexed.subscribe();
        let mut group: Vec<Submission> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut broken = false;
        let metrics = rt.metrics();
        while let Some(first) = rx.blocking_recv() {
            // Back-pressure: a burst may run ahead of the indexer only so far.
            let limit = self.max_backlog;
            if durable.saturating_sub(*indexed.borrow()) >= limit {
                tracing::warn!(
                    backlog = limit,
                    "audit journal backlog full; appends wait for the indexer"
                );
                let _ = rt.block_on(indexed.wait_for(|i| durable.saturating_sub(*i) < limit));
            }
            let now = Instant::now();
            self.pacer.observe(now, || (self.read_busy)(&metrics));
            let wait = self.pacer.wait(now);
            if !wait.is_zero() {
                // Whatever arrives meanwhile joins this group.
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            self.pacer.group_began(now);
            let mut next = Some(first);
            let mut bytes = 0;
            while let Some(s) = next.take() {
                if s.deadline.is_some_and(|d| d <= now) || s.done.is_closed() {
                    // Nobody will receive this answer: do not record it as given.
                    s.answer(Err(AuditError::DeadlineExceeded));
                } else {
                    bytes += s.bytes.len();
                    group.push(s);
                }
                if bytes < MAX_GROUP_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if group.is_empty() {
                continue;
            }
            if broken {
                answer_all(group.drain(..), &Err(AuditError::WriteFailed));
                continue;
            }
            buf.clear();
            let mut count = 0;
            for s in &group {
                buf.extend_from_slice(&s.bytes);
                count += s.count;
            }
            let result = self.write(&buf, durable);
            let result = match result {
                Ok(()) => {
                    durable += count;
                    self.durable.send_replace(durable);
                    self.shared.last_append_us.store(
                        self.shared.epoch.elapsed().as_micros() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.shared.dir.display(), "audit journal write failed");
                    // Cut back to the last durable record so later groups
                    // do not land after a half-written one.
                    // The zeros filled ahead go too: the next group fills again.
                    self.allocated = self.len;
                    if let Err(e) = self
                        .file
                        .set_len(self.len)
                        .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(|_| ()))
                    {
                        tracing::error!(error = %e, "audit journal cannot be repaired; refusing further appends");
                        broken = true;
                    }
                    Err(AuditError::WriteFailed)
                }
            };
            // The next group is likely about this one's size.
            let next = Vec::with_capacity(group.len());
            let done = std::mem::replace(&mut group, next);
            if let Err(mpsc::error::SendError((done, result))) = self.release.send((done, result)) {
                // The runtime is shutting down: answer from here.
                answer_all(done, &result);
            }
        }
        tracing::debug!("audit journal writer stopped");
    }

    /// Writes `buf` (whole records) and makes it durable, beginning a new
    /// segment first when the current one is full.
    fn write(&mut self, buf: &[u8], durable: u64) -> std::io::Result<()> {
        if self.len + buf.len() as u64 > self.segment_bytes && self.len > HEADER_LEN {
            let id = journal_id_bytes(&self.shared.journal_id).expect("checked at open");
            let file = create_segment(&self.shared.dir, &id, durable)?;
            let full = std::mem::replace(&mut self.file, file);
            // The closed segment's unused zeros give their space back. Not
            // synced: had they stayed, they would read as its end all the same.
            if let Err(e) = full.set_len(self.len) {
                tracing::warn!(error = %e, "cannot trim a closed audit journal segment");
            }
            self.len = HEADER_LEN;
            self.allocated = HEADER_LEN;
            self.shared
                .segments
                .lock()
                .expect("not poisoned")
                .push_back(durable);
        }
        let end = self.len + buf.len() as u64;
        if end > self.allocated {
            // Fill ahead, within the segment's size; one fsync makes both
            // the zeros and the group durable.
            let to = (self.allocated + FILL_AHEAD)
                .min(self.segment_bytes)
                .max(end);
            fill_zeros(&self.file, end, to)?;
            self.allocated = to;
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.len = end;
        Ok(())
    }
}

/// Reads records back, in order, for the indexer.
struct Reader {
    shared: Arc<Shared>,
    /// The segment being read, its reader, and the next record number.
    at: Option<(u64, BufReader<File>, u64)>,
    body: Vec<u8>,
}

impl Reader {
    /// A reader positioned nowhere yet: its first read seeks.
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            at: None,
            body: Vec::new(),
        }
    }

    /// Records `from..to`, all durable.
    fn read(&mut self, from: u64, to: u64) -> Result<Vec<AuditRecord>, JournalError> {
        let read = self.read_positioned(from, to);
        if read.is_err() {
            // The file position is past whatever failed: start afresh next time,
            // so a retry reads the same record again instead of the one after.
            self.at = None;
        }
        read
    }

    fn read_positioned(&mut self, from: u64, to: u64) -> Result<Vec<AuditRecord>, JournalError> {
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut next = from;
        while next < to {
            let (seg_first, seg_end) = {
                let segs = self.shared.segments.lock().expect("not poisoned");
                let i = segs.partition_point(|&f| f <= next);
                if i == 0 {
                    return Err(self
                        .shared
                        .damaged(format!("record {next} is in no segment (removed?)")));
                }
                (segs[i - 1], segs.get(i).copied().unwrap_or(u64::MAX))
            };
            if matches!(&self.at, Some((f, _, n)) if *f == seg_first && *n == next) {
                // What the buffer read past the last durable record is stale:
                // the zeros filled ahead of the records (and any group then
                // being written) have since been overwritten. Seeking to where
                // the next record starts drops the buffer, so only bytes read
                // now, of records already durable, are decoded.
                // (`BufReader::seek` always empties the buffer; asking for the
                // position alone would not.)
                let (_, r, _) = self.at.as_mut().expect("positioned");
                r.stream_position()
                    .and_then(|at| r.seek(SeekFrom::Start(at)))
                    .map_err(|e| self.shared.io(e))?;
            } else {
                self.at = Some(self.seek(seg_first, next)?);
            }
            let (_, r, n) = self.at.as_mut().expect("positioned");
            while *n < to.min(seg_end) {
                match read_frame(r, &mut self.body) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(self
                            .shared
                            .damaged(format!("segment {seg_first:020} ends before record {n}")));
                    }
                    Err(FrameError::Io(e)) => return Err(self.shared.io(e)),
                    Err(FrameError::Damaged(what)) => {
                        return Err(self
                            .shared
                            .damaged(format!("segment {seg_first:020}, record {n}: {what}")));
                    }
                }
                let rec = AuditRecord::decode_body(&self.body).map_err(|e| {
                    self.shared
                        .damaged(format!("segment {seg_first:020}, record {n}: {e}"))
                })?;
                out.push(rec);
                *n += 1;
            }
            next = *n;
        }
        Ok(out)
    }

    fn seek(&self, first: u64, to: u64) -> Result<(u64, BufReader<File>, u64), JournalError> {
        let path = segment_path(&self.shared.dir, first);
        let mut f = File::open(&path).map_err(|e| self.shared.io(e))?;
        f.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| self.shared.io(e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut body = Vec::new();
        for n in first..to {
            match read_frame(&mut r, &mut body) {
                Ok(true) => {}
                _ => {
                    return Err(self
                        .shared
                        .damaged(format!("segment {first:020} ends before record {n}")));
                }
            }
        }
        Ok((first, r, to))
    }
}

/// Counts an audit read waiting for the indexer while it lives.
struct ReaderWaiting<'a>(&'a Shared);

impl<'a> ReaderWaiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared
            .readers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        shared.reader_came.notify_one();
        Self(shared)
    }
}

impl Drop for ReaderWaiting<'_> {
    fn drop(&mut self) {
        self.0
            .readers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// When the indexer yields to answering and when it runs at full speed.
struct IndexPolicy {
    batch: usize,
    busy_share: f64,
    eager_above: u64,
    max_lag: Duration,
}

/// How the indexer takes its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// A small batch, then a pause: answers are being journaled.
    Yield,
    /// Full batches, no pause.
    Full,
}

impl IndexPolicy {
    /// `behind_for` is how long ago the indexer was last caught up: every
    /// record not yet indexed was written since, so it bounds their age.
    ///
    /// Yielding while answers arrive makes a burst cheaper to answer, and
    /// the deferred records are then indexed in full batches, which cost
    /// less per record. The lag bound is what keeps yielding from leaving
    /// auditors behind under steady load: it turns into a sawtooth of at
    /// most `max_lag`, at the same total indexing work.
    fn pace(&self, busy: bool, backlog: u64, behind_for: Duration, reader_waits: bool) -> Pace {
        if busy && !reader_waits && backlog < self.eager_above && behind_for < self.max_lag {
            Pace::Yield
        } else {
            Pace::Full
        }
    }
}

/// Moves durable records into the store until the writer has stopped and
/// everything it wrote is indexed, pacing itself by [`IndexPolicy`]. Store
/// errors are retried: the records stay safe in the journal meanwhile.
async fn index(
    store: Store,
    shared: Arc<Shared>,
    policy: IndexPolicy,
    writer: std::thread::JoinHandle<()>,
) {
    let mut durable_rx = shared.durable.clone();
    let mut reader = Some(Reader::new(shared.clone()));
    let mut indexed = *shared.indexed.borrow();
    let mut failures = 0u32;
    let mut caught_up_at = Instant::now();
    // The tiles each batch completes are stored with it, so checkpoints
    // need not read the leaves back.
    let mut tiles = TileBuilder::default();
    loop {
        let durable = *durable_rx.borrow_and_update();
        if durable == indexed {
            // An error means the writer has stopped: nothing more will come.
            if durable_rx.changed().await.is_err() && *durable_rx.borrow() == indexed {
                break;
            }
            // Caught up all the while it waited: the lag starts now, not
            // when it last caught up. Otherwise the first burst after an
            // idle spell longer than `max_lag` would be indexed at full speed
            // from its first record, taking CPU from its answers.
            caught_up_at = Instant::now();
            continue;
        }
        // While answers are being journaled, index in small steps with
        // pauses, so a burst is answered at full speed (see `IndexPolicy`).
        let yielding = policy.pace(
            shared.busy(),
            durable - indexed,
            caught_up_at.elapsed(),
            shared.readers.load(std::sync::atomic::Ordering::SeqCst) > 0,
        ) == Pace::Yield;
        let batch = if yielding {
            (policy.batch / 10).max(1)
        } else {
            policy.batch
        };
        let started = Instant::now();
        let to = durable.min(indexed + batch as u64);
        let mut r = reader.take().expect("reader is returned");
        let (r, read) = tokio::task::spawn_blocking(move || {
            let read = r.read(indexed, to);
            (r, read)
        })
        .await
        .expect("journal reader does not panic");
        reader = Some(r);
        let result = match read {
            Ok(records) => store
                .append_audit(
                    &records,
                    Some(JournalMark {
                        journal_id: &shared.journal_id,
                        from: indexed,
                        to,
                    }),
                    Some(&mut tiles),
                )
                .await
                .map_err(JournalError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                failures = 0;
                indexed = to;
                shared.indexed.send_replace(indexed);
                remove_indexed_segments(&shared, indexed);
                if yielding {
                    let worked = started.elapsed().as_secs_f64();
                    let pause = worked * (1.0 - policy.busy_share) / policy.busy_share;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs_f64(pause.min(2.0))) => {}
                        // An audit read is waiting: stop pausing.
                        () = shared.reader_came.notified() => {}
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 << failures.min(6));
                tracing::error!(
                    error = %e,
                    backlog = durable - indexed,
                    retry_in_ms = wait.as_millis() as u64,
                    "indexing the audit journal failed; records stay in the journal"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::debug!(indexed, "audit journal indexer stopped");
}

/// Deletes segments every record of which is in the store. The newest
/// segment stays: the writer appends to it.
fn remove_indexed_segments(shared: &Shared, indexed: u64) {
    let mut segs = shared.segments.lock().expect("not poisoned");
    while segs.len() > 1 && segs[1] <= indexed {
        let first = segs.pop_front().expect("len > 1");
        let path = segment_path(&shared.dir, first);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, segment = %path.display(), "cannot remove an indexed audit journal segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Purpose, Verdict};

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            audit_id: format!("audit-{i:08}"),
            recorded_at: 1_790_000_000_000_000 + i as i64,
            caller: "carrier-a".into(),
            request_id: format!("req-{i}"),
            job_id: Some("job".into()),
            purpose: Purpose::Cleanup,
            consent_ref: None,
            lookup_key: None,
            msisdn_hash: None,
            key_id: 1,
            verdict: Verdict::invalid(),
            mirror_version: 1,
            latency_us: 10,
        }
    }

    async fn store(dir: &Path, name: &str) -> Store {
        Store::connect(&format!("sqlite://{}", dir.join(name).display()))
            .await
            .unwrap()
    }

    fn config(dir: &Path) -> JournalConfig {
        JournalConfig {
            segment_bytes: 4096,
            index_batch: 7,
            ..JournalConfig::new(dir.join("journal"))
        }
    }

    /// Opens the journal, waiting for a previous writer thread to let go.
    async fn reopen(store: &Store, cfg: &JournalConfig) -> (Journal, JournalTasks) {
        for _ in 0..100 {
            match Journal::open(store.clone(), cfg.clone()).await {
                Err(JournalError::Locked(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                r => return r.unwrap(),
            }
        }
        panic!("the journal stayed locked");
    }

    async fn append_all(j: &Journal, from: u64, to: u64) {
        for chunk in (from..to).collect::<Vec<_>>().chunks(13) {
            let recs: Vec<_> = chunk.iter().map(|&i| record(i)).collect();
            j.append(&recs, None).await.unwrap();
        }
    }

    async fn request_ids(store: &Store) -> Vec<String> {
        store
            .audit_records_from(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record.request_id)
            .collect()
    }

    fn segments(cfg: &JournalConfig) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&cfg.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    /// Keeps the indexer from committing: a write lock on the SQLite file.
    async fn hold_writes(dir: &Path) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.join("a.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .unwrap();
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_reach_the_store_once_in_order_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let cfg = config(dir.path());
        let (j, tasks) = Journal::open(s.clone(), cfg.clone()).await.unwrap();
        append_all(&j, 0, 400).await;
        assert!(j.synced(Duration::from_secs(30)).await);
        assert_eq!(j.backlog(), 0);
        let want: Vec<String> = (0..400).map(|i| format!("req-{i}")).collect();
        assert_eq!(request_ids(&s).await, want);
        // 400 records of ~100 bytes fill several 4 KiB segments; indexed ones
        // are removed, the one being written stays.
        assert_eq!(segments(&cfg).len(), 1);
        drop(j);
        tasks.indexer.await.unwrap();
        let tail = segments(&cfg).pop().unwrap();
        let (end, len) = {
            let mut f = File::open(&tail).unwrap();
            (scan(&mut f).unwrap().1, f.metadata().unwrap().len())
        };
        assert!(len > end, "the segment is zero-filled ahead of its records");
        // Reopened, it goes on where it was; the zeros ahead are kept as
        // space to overwrite, not cut off as a torn tail.
        let (j, tasks) = reopen(&s, &cfg).await;
        assert_eq!(std::fs::metadata(&tail).unwrap().len(), len);
        append_all(&j, 400, 450).await;
        drop(j);
        tasks.indexer.await.unwrap();
        let want: Vec<String> = (0..450).map(|i| format!("req-{i}")).collect();
        assert_eq!(request_ids(&s).await, want);
        let check = crate::audit::log::verify_log(&s, None).await.unwrap();
        assert_eq!(check.problem, None);
        assert_eq!(check.records, 450);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_loses_nothing_acknowledged_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let cfg = config(dir.path());
        let (j, tasks) = Journal::open(s.clone(), cfg.clone()).await.unwrap();
        append_all(&j, 0, 20).await;
        assert!(j.synced(Duration::from_secs(30)).await);
        // The database stops taking writes; answers go on, from the journal.
        let mut lock = hold_writes(dir.path()).await;
        append_all(&j, 20, 300).await;
        assert_eq!(j.backlog(), 280);
        // The process dies: the indexer with it, mid-transaction.
        tasks.indexer.abort();
        drop(j);
        // A write that had not returned when it died: half a record, over
        // the zeros filled ahead of the last durable one.
        let tail = segments(&cfg).pop().unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tail)
            .unwrap();
        let (_, end) = scan(&mut f).unwrap();
        let mut torn = Vec::new();
        encode_records(&[record(999)], &mut torn);
        f.seek(SeekFrom::Start(end)).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        assert!(
            f.metadata().unwrap().len() > end + torn.len() as u64,
            "filled ahead"
        );
        drop(f);
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();

        let (j, tasks) = reopen(&s, &cfg).await;
        assert!(j.synced(Duration::from_secs(30)).await);
        let want: Vec<String> = (0..300).map(|i| format!("req-{i}")).collect();
        assert_eq!(
            request_ids(&s).await,
            want,
            "each acknowledged record exactly once"
        );
        // Appends continue after the cut.
        append_all(&j, 300, 310).await;
        drop(j);
        tasks.indexer.await.unwrap();
        assert_eq!(s.audit_count().await.unwrap(), 310);
    }

    /// The indexer reads a segment while the writer is still filling it: its
    /// read-ahead takes in the zeros past the last durable record, which the
    /// next group then overwrites. Reading on must see that group, not the
    /// zeros (which read as "a record length is impossible"; the indexer
    /// retried, re-reading the segment from its start each time).
    #[test]
    fn the_reader_does_not_decode_what_it_read_ahead_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = create_segment(dir.path(), &[7; 16], 0).unwrap();
        fill_zeros(&f, HEADER_LEN, HEADER_LEN + FILL_AHEAD).unwrap();
        let mut group = |from: u64, to: u64| {
            let mut buf = Vec::new();
            encode_records(&(from..to).map(record).collect::<Vec<_>>(), &mut buf);
            f.write_all(&buf).unwrap();
        };
        group(0, 10);
        let (_, durable) = watch::channel(10);
        let mut reader = Reader::new(Shared::new(
            dir.path().to_path_buf(),
            "test".into(),
            durable,
            0,
            [0].into(),
        ));
        let ids = |recs: Vec<AuditRecord>| -> Vec<String> {
            recs.into_iter().map(|r| r.request_id).collect()
        };
        let read = reader.read(0, 10).unwrap();
        assert_eq!(
            ids(read),
            (0..10).map(|i| format!("req-{i}")).collect::<Vec<_>>()
        );
        group(10, 25);
        let read = reader
            .read(10, 25)
            .expect("the records written after the first read");
        assert_eq!(
            ids(read),
            (10..25).map(|i| format!("req-{i}")).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_inside_the_journal_stops_indexing_there() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let cfg = JournalConfig {
            index_batch: 1,
            ..config(dir.path())
        };
        let (j, tasks) = Journal::open(s.clone(), cfg.clone()).await.unwrap();
        let mut lock = hold_writes(dir.path()).await;
        append_all(&j, 0, 200).await;
        tasks.indexer.abort();
        drop(j);
        // Flip a byte in the body of the first record of the second segment.
        let second = &segments(&cfg)[1];
        let first_no: u64 = second
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut bytes = std::fs::read(second).unwrap();
        bytes[HEADER_LEN as usize + FRAME_LEN + 3] ^= 0x40;
        std::fs::write(second, bytes).unwrap();
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();

        let (j, _tasks) = reopen(&s, &cfg).await;
        assert!(!j.synced(Duration::from_secs(2)).await);
        // Everything before the damaged record is indexed; nothing after it
        // is skipped over.
        assert_eq!(s.audit_count().await.unwrap() as u64, first_no);
        assert_eq!(j.backlog(), 200 - first_no);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_journal_one_gateway_one_database() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path(), "a.db").await;
        let b = store(dir.path(), "b.db").await;
        let cfg = config(dir.path());
        let (j, tasks) = Journal::open(a.clone(), cfg.clone()).await.unwrap();
        assert!(matches!(
            Journal::open(a.clone(), cfg.clone()).await,
            Err(JournalError::Locked(_))
        ));
        drop(j);
        tasks.indexer.await.unwrap();
        match reopen_other(&b, &cfg).await {
            Err(JournalError::OtherLog { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a journal was opened for another database"),
        }
    }

    async fn reopen_other(
        store: &Store,
        cfg: &JournalConfig,
    ) -> Result<(Journal, JournalTasks), JournalError> {
        for _ in 0..100 {
            match Journal::open(store.clone(), cfg.clone()).await {
                Err(JournalError::Locked(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                r => return r,
            }
        }
        panic!("the journal stayed locked");
    }

    proptest::proptest! {
        /// Journals written with the table CRC read back with the hardware
        /// one, and the other way round.
        #[test]
        fn the_hardware_crc_is_the_table_crc(data in proptest::collection::vec(0u8.., 0..600)) {
            proptest::prop_assert_eq!(crc32c(&data), CRC.checksum(&data));
        }
    }

    #[test]
    fn indexing_yields_only_to_a_burst_within_its_bounds() {
        let p = IndexPolicy {
            batch: 100,
            busy_share: 0.05,
            eager_above: 1000,
            max_lag: Duration::from_secs(10),
        };
        let young = Duration::from_secs(3);
        assert_eq!(p.pace(true, 10, young, false), Pace::Yield);
        // The burst is over, or has gone on too long, or grew too large.
        assert_eq!(p.pace(false, 10, young, false), Pace::Full);
        assert_eq!(p.pace(true, 10, Duration::from_secs(10), false), Pace::Full);
        assert_eq!(p.pace(true, 1000, young, false), Pace::Full);
        // An auditor is waiting for the store.
        assert_eq!(p.pace(true, 10, young, true), Pace::Full);
    }

    #[test]
    fn groups_are_spaced_only_while_the_workers_are_saturated() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let t0 = Instant::now();
        let mut p = GroupPacer::new(ms(1), t0, Duration::ZERO);
        p.group_began(t0);
        // A quarter busy: the next group begins at once.
        p.observe(t0 + ms(20), || (ms(10), 2));
        assert_eq!(p.wait(t0 + us(20_100)), Duration::ZERO);
        // 95% busy: it waits out the interval since the last group began.
        p.observe(t0 + ms(40), || (ms(48), 2));
        p.group_began(t0 + ms(40));
        assert_eq!(p.wait(t0 + us(40_250)), us(750));
        assert_eq!(p.wait(t0 + ms(41)), Duration::ZERO);
        // Within a window nothing is read and nothing changes.
        p.observe(t0 + ms(50), || unreachable!("read within a window"));
        assert_eq!(p.wait(t0 + ms(40)), ms(1));
        // Back below the mark.
        p.observe(t0 + ms(60), || (ms(58), 2));
        assert_eq!(p.wait(t0 + ms(40)), Duration::ZERO);
        // A zero interval never waits and never reads.
        let mut off = GroupPacer::new(Duration::ZERO, t0, Duration::ZERO);
        off.group_began(t0);
        off.observe(t0 + ms(100), || unreachable!("read while off"));
        assert_eq!(off.wait(t0), Duration::ZERO);
        // Busy time from before the pacer was made does not count: a
        // runtime busy for an hour, then idle, is not saturated.
        let mut late = GroupPacer::new(ms(1), t0, Duration::from_secs(3600));
        late.group_began(t0);
        late.observe(t0 + ms(20), || (Duration::from_secs(3600) + ms(4), 2));
        assert_eq!(late.wait(t0 + us(100)), Duration::ZERO);
    }

    /// A runtime whose two workers are busy all the time, whatever the
    /// machine lets this test's threads do.
    fn saturated(_: &tokio::runtime::RuntimeMetrics) -> (Duration, usize) {
        static SINCE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        (SINCE.get_or_init(Instant::now).elapsed() * 2, 2)
    }

    /// A runtime whose workers never work.
    fn idle(_: &tokio::runtime::RuntimeMetrics) -> (Duration, usize) {
        (Duration::ZERO, 2)
    }

    async fn six_appends(read_busy: BusyReading, interval: Duration) -> Duration {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let cfg = JournalConfig {
            busy_group_interval: interval,
            read_busy,
            ..config(dir.path())
        };
        let (j, _tasks) = Journal::open(s.clone(), cfg).await.unwrap();
        // Let sampling windows pass.
        j.append(&[record(0)], None).await.unwrap();
        tokio::time::sleep(SATURATION_WINDOW * 3).await;
        j.append(&[record(1)], None).await.unwrap();
        let t = Instant::now();
        for i in 2..8 {
            j.append(&[record(i)], None).await.unwrap();
        }
        t.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saturated_runtime_spaces_group_commits() {
        // The writer reads the workers' busy time through `read_busy`; how
        // the policy reads real runtimes is `groups_are_spaced_only_while_
        // the_workers_are_saturated`'s subject. Measured against real
        // spinning tasks, this test failed whenever other tests held the
        // cores.
        let interval = Duration::from_millis(40);
        let took = six_appends(saturated, interval).await;
        // Six groups, each begun at least `interval` after the one before.
        // The first of them began after the clock started, but the one
        // before it (record 1's) began before, so only the five gaps after
        // the first are certain to fall inside `took`.
        assert!(took >= interval * 5, "six appends took {took:?}");
        // Unsaturated, nothing waits for the interval. Were the interval
        // applied, the six would take at least 25 s.
        let interval = Duration::from_secs(5);
        let took = six_appends(idle, interval).await;
        assert!(took < interval, "six appends took {took:?}");
    }

    /// Keeps the writer busy (an append every few milliseconds) until dropped.
    struct Traffic(tokio::task::JoinHandle<()>);

    impl Traffic {
        fn start(j: &Journal) -> Self {
            let j = j.clone();
            Self(tokio::spawn(async move {
                for i in 1_000_000.. {
                    j.append(&[record(i)], None).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }))
        }
    }

    impl Drop for Traffic {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// A yielding indexer: steps of 10 records, then pauses 99 times as long
    /// (up to 2 s), and no lag bound unless a test sets one.
    fn yielding(dir: &Path) -> JournalConfig {
        JournalConfig {
            index_batch: 100,
            busy_share: 0.01,
            max_lag: Duration::from_secs(3600),
            ..config(dir)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_audit_read_ends_the_yield() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let (j, _tasks) = Journal::open(s.clone(), yielding(dir.path()))
            .await
            .unwrap();
        let _traffic = Traffic::start(&j);
        append_all(&j, 0, 2000).await;
        // Yielding, 2,000 records would take minutes to index.
        assert!(j.backlog() > 1000, "backlog {}", j.backlog());
        assert!(j.synced(Duration::from_secs(20)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexing_falls_behind_a_burst_by_at_most_the_lag_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let cfg = JournalConfig {
            max_lag: Duration::from_millis(300),
            ..yielding(dir.path())
        };
        let (j, _tasks) = Journal::open(s.clone(), cfg).await.unwrap();
        let _traffic = Traffic::start(&j);
        append_all(&j, 0, 2000).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        // Not `synced`: a waiting reader would end the yield by itself.
        while j.backlog() > 100 {
            assert!(Instant::now() < deadline, "backlog {}", j.backlog());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_after_a_long_idle_spell_is_still_yielded_to() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let lag = Duration::from_secs(3);
        let cfg = JournalConfig {
            max_lag: lag,
            ..yielding(dir.path())
        };
        let (j, _tasks) = Journal::open(s.clone(), cfg).await.unwrap();
        append_all(&j, 0, 1).await;
        assert!(j.synced(Duration::from_secs(20)).await);
        // Idle, and caught up, for longer than the lag bound.
        tokio::time::sleep(lag + Duration::from_millis(500)).await;
        let _traffic = Traffic::start(&j);
        let burst: Vec<_> = (1..2001).map(record).collect();
        j.append(&burst, None).await.unwrap();
        // Yielding, the indexer takes steps of 10 records, each followed by
        // a pause 99 times as long; at full speed (100 records a step, no
        // pause) it would be through the burst well within this second,
        // which is still inside the lag bound.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(j.backlog() > 1000, "backlog {}", j.backlog());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_submissions_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a.db").await;
        let (j, tasks) = Journal::open(s.clone(), config(dir.path())).await.unwrap();
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            j.append(&[record(1)], Some(past)).await,
            Err(AuditError::DeadlineExceeded)
        ));
        j.append(&[record(2)], Some(Instant::now() + Duration::from_secs(60)))
            .await
            .unwrap();
        drop(j);
        tasks.indexer.await.unwrap();
        assert_eq!(request_ids(&s).await, vec!["req-2".to_owned()]);
    }
}
