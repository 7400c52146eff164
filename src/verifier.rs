//! The verification use case: parse → keyed hash → cache/store → match →
//! durable audit → answer. Transport-agnostic: `grpc` adapts it to tonic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::audit::{AuditError, AuditSink, CommitMode, JournalError};
use crate::cache::{CacheConfig, CachedRecord, Lookup, LookupCounts, MirrorCache, Miss};
use crate::clock::Moment;
use crate::domain::{
    AuditRecord, CivilDate, KeyedHasher, LookupKey, Purpose, RawRequest, Verdict, VerifyInput,
    Violation, decide,
};
use crate::store::{Store, StoreError};

/// Why the verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request is not valid; one violation per bad field.
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(AuditError),
    /// The caller's deadline passed before the answer was ready; nothing
    /// was audited as answered.
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

impl From<AuditError> for VerifyError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::DeadlineExceeded => Self::DeadlineExceeded,
            e => Self::Audit(e),
        }
    }
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), VerifyError> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(VerifyError::DeadlineExceeded),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub cache: CacheConfig,
    /// Where audit records become durable before answers leave.
    pub audit: CommitMode,
    /// How often to look for mirror imports to invalidate cached entries.
    pub watch_interval: Duration,
}

impl VerifierConfig {
    /// Defaults, with audit records committed as `audit` says.
    pub fn new(audit: CommitMode) -> Self {
        Self {
            cache: CacheConfig::default(),
            audit,
            watch_interval: Duration::from_secs(1),
        }
    }
}

/// One request of a call, with the context that is recorded with it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub raw: RawRequest<'a>,
    pub purpose: Purpose,
}

/// What the gateway answers for one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request_id: String,
    pub verdict: Verdict,
    /// Non-empty only for item-level INVALID answers inside a stream.
    pub violations: Vec<Violation>,
    pub audit_id: String,
    pub mirror_version: i64,
}

/// Shared, cheaply cloneable handle to the use case.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    hasher: KeyedHasher,
    store: Store,
    cache: MirrorCache,
    audit: AuditSink,
    mirror_version: AtomicI64,
}

/// Background tasks owned by a verifier; await them on shutdown.
pub struct VerifierTasks {
    pub audit: tokio::task::JoinHandle<()>,
    pub watcher: tokio::task::JoinHandle<()>,
}

/// The request id echoed for an invalid item: only printable ASCII, bounded,
/// so a hostile id cannot smuggle anything into logs or responses.
fn echo_request_id(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

impl Verifier {
    /// Checks the hash key against the store, then starts the audit sink
    /// and the mirror watcher.
    pub async fn start(
        hasher: KeyedHasher,
        store: Store,
        cfg: VerifierConfig,
    ) -> Result<(Self, VerifierTasks), StartError> {
        store
            .check_key(hasher.key_id(), &hasher.fingerprint())
            .await?;
        let version = store.mirror_version().await?;
        let (audit, audit_task) = AuditSink::start(store.clone(), cfg.audit).await?;
        let inner = Arc::new(Inner {
            hasher,
            store,
            cache: MirrorCache::new(cfg.cache),
            audit,
            mirror_version: AtomicI64::new(version),
        });
        // The watcher holds only a weak reference, so dropping the last
        // Verifier stops it and lets the audit writer drain.
        let watcher = tokio::spawn(watch_mirror(Arc::downgrade(&inner), cfg.watch_interval));
        Ok((
            Self { inner },
            VerifierTasks {
                audit: audit_task,
                watcher,
            },
        ))
    }

    /// The keyed hasher, for turning plaintext filters into hashes.
    pub fn hasher(&self) -> &KeyedHasher {
        &self.inner.hasher
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn mirror_version(&self) -> i64 {
        self.inner.mirror_version.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until every audit record made durable so
    /// far can be read from the store; returns whether it caught up.
    pub async fn audit_synced(&self, limit: Duration) -> bool {
        self.inner.audit.synced(limit).await
    }

    /// Audit records durable but not yet readable from the store.
    pub fn audit_backlog(&self) -> u64 {
        self.inner.audit.backlog()
    }

    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Mirror lookups answered by the cache and by the store so far.
    pub fn cache_lookups(&self) -> LookupCounts {
        self.inner.cache.lookups()
    }

    /// Verifies one request. Invalid input is an error, not an answer.
    ///
    /// The span is at debug level: at the default `info` filter no event
    /// inside it is logged (store and audit failures are logged where they
    /// become statuses, outside it), and building it for every request
    /// cost the unary path a few percent of its CPU.
    ///
    /// `caller` is the principal's shared id: records hold it, not a copy.
    #[tracing::instrument(name = "verify", level = "debug", skip_all, fields(caller = %caller))]
    pub async fn verify(
        &self,
        caller: &Arc<str>,
        item: Item<'_>,
        started: Moment,
        deadline: Option<Instant>,
    ) -> Result<Answer, VerifyError> {
        // The cache lookup is read ahead while the request is parsed and
        // hashed (see `MirrorCache::read_ahead`).
        let mut ahead = None;
        let probe = VerifyInput::parse_into_probe(
            &item.raw,
            started.today_vn(),
            &self.inner.hasher,
            |key| match &mut ahead {
                None => ahead = Some(self.inner.cache.read_ahead(key)),
                Some(a) => a.step(),
            },
        )
        .map_err(VerifyError::Invalid)?;
        let cached = match self.inner.cache.lookup(&probe.lookup_key) {
            Lookup::Hit(hit) => {
                self.inner.cache.count(1, 0);
                hit
            }
            Lookup::Miss(miss) => {
                self.inner.cache.count(0, 1);
                let rec = self.inner.store.get_record(&probe.lookup_key).await?;
                self.inner.cache.fill(probe.lookup_key, miss, rec.as_ref());
                rec
            }
        };
        let verdict = decide(&probe, cached.as_ref());
        let record = self.audit_record(
            caller,
            None,
            &item,
            Some((&probe.lookup_key, &probe.msisdn_hash)),
            verdict,
            Stamp::of(started),
        );
        check_deadline(deadline)?;
        self.inner
            .audit
            .append(std::slice::from_ref(&record), deadline)
            .await?;
        Ok(answer_of(record, Vec::new()))
    }

    /// Verifies a batch, answering every item in order. Invalid items get an
    /// INVALID answer (audited like any other); store or audit failures fail
    /// the whole batch, since no answer may leave without its audit record.
    #[tracing::instrument(name = "verify_batch", level = "debug", skip_all, fields(caller = %caller, items = items.len()))]
    pub async fn verify_batch(
        &self,
        caller: &Arc<str>,
        job_id: Option<&str>,
        items: &[Item<'_>],
        started: Moment,
        deadline: Option<Instant>,
    ) -> Result<Vec<Answer>, VerifyError> {
        let today: CivilDate = started.today_vn();
        let parsed: Vec<Result<_, Vec<Violation>>> = items
            .iter()
            .map(|it| VerifyInput::parse(&it.raw, today).map(|i| i.into_probe(&self.inner.hasher)))
            .collect();

        // Cache first, then one store query for every distinct miss.
        let mut found: HashMap<LookupKey, CachedRecord, KeyHash> =
            HashMap::with_capacity_and_hasher(items.len(), KeyHash);
        // The store query takes the missed keys as one slice; what each
        // lookup saw stays beside them for its fill.
        let mut missed: Vec<LookupKey> = Vec::new();
        let mut misses: Vec<Miss> = Vec::new();
        let mut distinct: Vec<LookupKey> = Vec::with_capacity(items.len());
        for p in parsed.iter().flatten() {
            if found.insert(p.lookup_key, None).is_none() {
                distinct.push(p.lookup_key);
            }
        }
        for (key, lookup) in distinct.iter().zip(self.inner.cache.lookup_many(&distinct)) {
            match lookup {
                Lookup::Hit(hit) => {
                    found.insert(*key, hit);
                }
                Lookup::Miss(miss) => {
                    missed.push(*key);
                    misses.push(miss);
                }
            }
        }
        self.inner
            .cache
            .count((found.len() - misses.len()) as u64, misses.len() as u64);
        if !missed.is_empty() {
            for (k, rec) in self.inner.store.get_records(&missed).await? {
                found.insert(k, Some(rec));
            }
            for (k, miss) in missed.into_iter().zip(misses) {
                self.inner.cache.fill(k, miss, found[&k].as_ref());
            }
        }

        let mut records = Vec::with_capacity(items.len());
        let mut violations = Vec::with_capacity(items.len());
        // One copy for the whole batch, shared by its records.
        let job_id: Option<Arc<str>> = job_id.map(Into::into);
        // The batch is answered as one: one time and latency for all its
        // records (two clock reads per item were 2% of a warm stream).
        let stamp = Stamp::of(started);
        for (item, p) in items.iter().zip(parsed) {
            let (record, item_violations) = match p {
                Ok(probe) => {
                    let verdict = decide(&probe, found[&probe.lookup_key].as_ref());
                    let keys = Some((&probe.lookup_key, &probe.msisdn_hash));
                    (
                        self.audit_record(caller, job_id.as_ref(), item, keys, verdict, stamp),
                        Vec::new(),
                    )
                }
                Err(v) => (
                    self.audit_record(
                        caller,
                        job_id.as_ref(),
                        item,
                        None,
                        Verdict::invalid(),
                        stamp,
                    ),
                    v,
                ),
            };
            records.push(record);
            violations.push(item_violations);
        }
        check_deadline(deadline)?;
        self.inner.audit.append(&records, deadline).await?;
        // Built from the records once they are durable, taking their
        // strings rather than copying them.
        Ok(records
            .into_iter()
            .zip(violations)
            .map(|(r, v)| answer_of(r, v))
            .collect())
    }

    fn audit_record(
        &self,
        caller: &Arc<str>,
        job_id: Option<&Arc<str>>,
        item: &Item<'_>,
        keys: Option<(&LookupKey, &crate::domain::MsisdnHash)>,
        verdict: Verdict,
        stamp: Stamp,
    ) -> AuditRecord {
        let valid = keys.is_some();
        AuditRecord {
            audit_id: new_audit_id(stamp.recorded_at),
            recorded_at: stamp.recorded_at,
            caller: caller.clone(),
            request_id: if valid {
                item.raw.request_id.to_owned()
            } else {
                echo_request_id(item.raw.request_id)
            },
            job_id: job_id.cloned(),
            purpose: item.purpose,
            consent_ref: if valid {
                item.raw.consent_ref.map(str::to_owned)
            } else {
                None
            },
            lookup_key: keys.map(|k| *k.0),
            msisdn_hash: keys.map(|k| *k.1),
            key_id: self.inner.hasher.key_id(),
            verdict,
            mirror_version: self.mirror_version(),
            latency_us: stamp.latency_us,
        }
    }
}

/// When an answer was recorded, and how long it took since its request
/// arrived.
#[derive(Clone, Copy)]
struct Stamp {
    recorded_at: i64,
    latency_us: u32,
}

impl Stamp {
    /// Now, for a call that arrived at `started`: one clock read, the
    /// monotonic one.
    fn of(started: Moment) -> Self {
        let elapsed = started.instant.elapsed();
        Self {
            recorded_at: started.wall_after(elapsed),
            latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
        }
    }
}

/// A new audit id: a UUIDv7 for `at_micros`, time-ordered so that the
/// store's index on it grows at one end. Its 74 random bits come from a
/// per-thread pool refilled from the operating system 4 KiB at a time;
/// `Uuid::now_v7` makes a `getrandom` system call for every id, which was
/// 2–3% of the gateway's CPU time in a cold run.
fn new_audit_id(at_micros: i64) -> String {
    use ring::rand::SecureRandom;
    const POOL: usize = 4096;
    const BITS: usize = 10;
    thread_local! {
        static RANDOM: std::cell::RefCell<([u8; POOL], usize)> =
            const { std::cell::RefCell::new(([0; POOL], POOL)) };
    }
    let drawn = RANDOM.with_borrow_mut(|(pool, used)| {
        if *used + BITS > POOL {
            ring::rand::SystemRandom::new().fill(pool).ok()?;
            *used = 0;
        }
        let mut bits = [0u8; BITS];
        bits.copy_from_slice(&pool[*used..*used + BITS]);
        *used += BITS;
        Some(bits)
    });
    let id = match drawn {
        Some(bits) => {
            let millis = u64::try_from(at_micros / 1000).unwrap_or(0);
            uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
        }
        // The OS would not give randomness now; let uuid ask it again.
        None => uuid::Uuid::now_v7(),
    };
    // Formatted on the stack and allocated once at its final size:
    // `to_string` grows a String through `fmt`, two allocations per answer.
    let mut text = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// Hashes lookup keys by their first eight bytes. They are HMAC outputs
/// under a key callers do not know, so those bytes are already uniform and
/// cannot be chosen to collide: SipHash over all 32 bytes is work these keys
/// do not need, on a map filled for every batch.
#[derive(Clone, Copy, Default)]
struct KeyHash;

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `LookupKey` hashes as one 32-byte write (after its length, which
        // is the same for every key and arrives through `write_usize`).
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_usize(&mut self, _len: usize) {}
}

fn answer_of(r: AuditRecord, violations: Vec<Violation>) -> Answer {
    Answer {
        request_id: r.request_id,
        verdict: r.verdict,
        violations,
        audit_id: r.audit_id,
        mirror_version: r.mirror_version,
    }
}

/// Follows imports made by any process: when the mirror version moves, drop
/// the cached entries of every key that changed (or the whole cache after a
/// large import).
async fn watch_mirror(inner: std::sync::Weak<Inner>, every: Duration) {
    const MAX_TARGETED: usize = 100_000;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let known = inner.mirror_version.load(Ordering::Relaxed);
        let latest = match inner.store.mirror_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "mirror version check failed");
                continue;
            }
        };
        if latest == known {
            continue;
        }
        match inner.store.changed_since(known, MAX_TARGETED).await {
            Ok(Some(keys)) => {
                for k in &keys {
                    inner.cache.invalidate(k);
                }
                tracing::info!(
                    from = known,
                    to = latest,
                    invalidated = keys.len(),
                    "mirror updated"
                );
            }
            Ok(None) => {
                inner.cache.invalidate_all();
                tracing::info!(from = known, to = latest, "mirror updated; cache cleared");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading mirror changes failed");
                continue;
            }
        }
        inner.mirror_version.store(latest, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_ids_are_distinct_v7_uuids_of_their_time() {
        let at = 1_795_000_000_123_456; // 2026-11-18, in microseconds
        // More than one pool's worth, so a refill is crossed.
        let ids: Vec<String> = (0..2000).map(|_| new_audit_id(at)).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 7);
            let (secs, nanos) = u.get_timestamp().expect("v7 has a time").to_unix();
            assert_eq!(
                secs * 1000 + u64::from(nanos) / 1_000_000,
                (at / 1000) as u64
            );
        }
    }
}
