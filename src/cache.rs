//! moka in front of the mirror: positive entries (the record) and negative
//! entries (the ID is not in the mirror), size-bounded with a TTL each.
//!
//! Imports invalidate what they changed through [`MirrorCache::invalidate`],
//! driven by the mirror watcher in `verifier`. A miss whose store read may
//! predate such an invalidation is not cached (see [`MirrorCache::fill`]);
//! the TTL bounds anything else.
//!
//! Memory is the constraint that shapes this module. A moka entry costs about
//! 350 bytes of its own (key `Arc`, entry metadata, deque and hash-table
//! nodes) before any value, more than the record it would hold. So moka holds
//! *buckets*, not records: the lookup key's first bytes pick one of a
//! power-of-two number of buckets, sized for 8 to 16 records each, and a
//! bucket is a *slot*: one byte vector holding its records packed back to
//! back. moka's per-entry cost is then shared by a bucket's records, and a
//! record costs its packed size (about 160 bytes with a three-word name).
//! Lookup keys are HMAC outputs, so buckets fill evenly.
//!
//! A bucket changes under its own lock. A miss usually adds its record to
//! the slot in place: replacing the slot in moka cost more than the rest of
//! the miss (moka `insert` was ~60% of a fill). moka weighs a slot only when
//! it is inserted, so records added in place *borrow* their weight from spare
//! room held back from moka's capacity, and a slot that has borrowed a few is
//! replaced by one weighed in full (see [`MirrorCache::spare`]). Each bucket
//! counts the replacements of its slot, so that filling a miss can reuse the
//! slot its lookup read when it was not replaced in between, instead of a
//! second moka `get`. These counters are per bucket, not per stripe of
//! buckets: with a thousand misses of a batch and several batches filling at
//! once, a shared counter had almost always moved. They cost about 24 bytes
//! per bucket, under two per record.
//!
//! Lookups do not go through moka: each bucket points at its current slot,
//! and moka, told of a sample of lookups, only decides which slots to keep
//! (see [`MirrorCache::lookup`]). A slot's records carry an index of their
//! keys' bytes, so a hit does not walk the records it passes.
//!
//! Each record carries its own insertion time, checked on read, so the
//! positive and negative TTLs hold per record; expired records are dropped
//! the next time their bucket changes, and a bucket nobody writes to expires
//! as a whole after the longer TTL.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::domain::{DobPrecision, FieldHash, LookupKey, MirrorRecord, RecordStatus};

/// One lookup read ahead step by step (see [`MirrorCache::read_ahead`];
/// `lookup_many` steps one per key of a group). It reads addresses only:
/// the lookup itself reads again whatever it decides on.
pub struct ReadAhead<'c> {
    cache: &'c MirrorCache,
    bucket: u32,
    key: LookupKey,
    /// Steps requested so far.
    done: u8,
}

/// Steps of a [`ReadAhead`] after the bucket: the slot, its index, the record.
const READ_AHEAD_STEPS: usize = 3;

impl ReadAhead<'_> {
    /// Requests the next step of the chain: the slot, its index, then the
    /// record the index points at. Past the last step it does nothing.
    pub fn step(&mut self) {
        let state = self.cache.state(self.bucket);
        let current = state.current();
        if let Some(slot) = current.as_ref() {
            match self.done {
                1 => prefetch_object::<Slot>(slot),
                2 => prefetch_slice(slot.read().index.as_slice()),
                3 => {
                    if let Some(bytes) = slot.read().candidates(&self.key.0).next() {
                        prefetch_slice(&bytes[..bytes.len().min(READ_AHEAD)]);
                    }
                }
                _ => {}
            }
        }
        self.done = self.done.saturating_add(1);
    }
}

/// `None` is a negative entry. A hit decodes its record from the packed
/// bucket, so the caller owns it.
pub type CachedRecord = Option<MirrorRecord>;

#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
        }
    }
}

/// Records per bucket when the cache is full: between half this and this.
const BUCKET_TARGET: u64 = 16;
/// Up to this many records, buckets hold about one record each.
const SMALL_CACHE: u64 = 1024;
/// One bucket: its current slot, and what orders changes to it.
#[derive(Default)]
struct BucketLock {
    /// The slot lookups read: the one moka holds for this bucket, set under
    /// `lock` before moka gets it and cleared by moka's eviction listener.
    /// Lookups read it here instead of through moka's `get`, whose read
    /// bookkeeping was over half the cost of a hit (see
    /// [`MirrorCache::lookup`]).
    current: RwLock<Option<Arc<Slot>>>,
    /// Held while a bucket is read, rebuilt and replaced, so that two
    /// changes to one bucket cannot undo each other (an insert racing an
    /// invalidation must not bring the invalidated record back).
    lock: Mutex<()>,
    /// Changes made to the bucket, counted under `lock` after each is in
    /// moka: a lookup that read the count before the bucket sees a different
    /// count at `fill` if anything changed since.
    changes: AtomicU64,
    /// Invalidations of keys of the bucket, cached or not, counted under
    /// `lock` before each.
    invalidations: AtomicU64,
}

impl BucketLock {
    /// The guarded state is the bucket in moka, which a panicking holder
    /// leaves whole, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    fn invalidating(&self) {
        self.invalidations.fetch_add(1, Ordering::Release);
    }

    /// Poisoning is ignored: the guarded value is a pointer, set whole.
    fn current(&self) -> RwLockReadGuard<'_, Option<Arc<Slot>>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_current(&self, slot: Option<Arc<Slot>>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = slot;
    }

    /// Clears the current slot if it is `slot`: moka has dropped it.
    fn forget(&self, slot: &Arc<Slot>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, slot)) {
            *current = None;
        }
    }
}

/// One bucket as moka holds it. Its records change in place under the
/// bucket's lock, so a miss adds its record without a moka `insert`.
struct Slot {
    records: RwLock<SlotRecords>,
    /// moka's weight of the slot: its record count when it was inserted.
    /// Records added in place beyond it are *borrowed* from the cache's
    /// spare room (see [`MirrorCache::spare`]).
    weighed: u32,
    /// When it was inserted, in cache seconds: moka expires a slot this
    /// long after its insert, and lookups treat it so before moka gets to it.
    born: u32,
}

struct SlotRecords {
    /// Packed records, back to back.
    bytes: Vec<u8>,
    /// One entry per record, in order: four bytes of its key above its
    /// offset in `bytes` (see [`index_entry`]). A hit reads these eight
    /// bytes per record instead of walking the records themselves, which
    /// in a full cache meant a cache miss per record passed.
    index: Vec<u64>,
    /// Set once moka has dropped the slot; nothing is added to it after.
    gone: bool,
    /// The earliest insertion time of its records (`u32::MAX` with none):
    /// while that is younger than the shorter TTL, none can have expired,
    /// and a fill of a key not here need not walk the records.
    oldest: u32,
}

/// An index entry: the key's tag above the record's offset.
fn index_entry(key: &[u8; 32], offset: usize) -> u64 {
    // Buckets stay far below 4 GiB: moka bounds what they hold.
    (u64::from(tag(key)) << 32) | offset as u64
}

/// The key's bytes 4..8 (bytes 0..4 chose the bucket).
fn tag(key: &[u8; 32]) -> u32 {
    u32::from_le_bytes([key[4], key[5], key[6], key[7]])
}

impl SlotRecords {
    fn with_capacity(bytes: usize, records: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            index: Vec::with_capacity(records),
            gone: false,
            oldest: u32::MAX,
        }
    }

    fn count(&self) -> u32 {
        self.index.len() as u32
    }

    fn borrowed(&self, weighed: u32) -> u32 {
        self.count().saturating_sub(weighed)
    }

    /// Exact growth: spare capacity would cost memory in every bucket, and
    /// most buckets grow a few times.
    fn push(&mut self, key: &LookupKey, born: u32, value: Option<&MirrorRecord>) {
        let offset = self.bytes.len();
        self.bytes.reserve_exact(packed_len(value));
        pack(&mut self.bytes, key, born, value);
        self.index.reserve_exact(1);
        self.index.push(index_entry(&key.0, offset));
        self.oldest = self.oldest.min(born);
    }

    /// The packed bytes from each record whose index tag matches `key`'s,
    /// in order: the records a lookup of `key` reads.
    fn candidates<'s>(&'s self, key: &[u8; 32]) -> impl Iterator<Item = &'s [u8]> + 's {
        let tag = u64::from(tag(key));
        self.index
            .iter()
            .filter(move |&&e| e >> 32 == tag)
            .filter_map(|&e| self.bytes.get(e as u32 as usize..))
    }

    fn find(&self, key: &[u8; 32]) -> Option<Packed<'_>> {
        self.candidates(key)
            .filter_map(|b| Records(b).next())
            .find(|r| r.key() == key)
    }
}

impl Slot {
    fn new(records: SlotRecords, born: u32) -> Arc<Self> {
        Arc::new(Self {
            weighed: records.count(),
            records: RwLock::new(records),
            born,
        })
    }

    /// Poisoning is ignored: a writer changes the records with no call that
    /// can panic midway, so the records stay whole.
    fn read(&self) -> RwLockReadGuard<'_, SlotRecords> {
        self.records.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SlotRecords> {
        self.records.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lookup that missed: what its bucket held then, for [`MirrorCache::fill`].
/// It keeps that bucket alive until it is filled or dropped (across the
/// store read), so a batch's misses may briefly hold replaced buckets.
pub struct Miss {
    bucket: u32,
    changes: u64,
    invalidations: u64,
    seen: Option<Arc<Slot>>,
}

/// What [`MirrorCache::lookup`] found.
pub enum Lookup {
    /// The entry (which may be a negative entry).
    Hit(CachedRecord),
    Miss(Miss),
}

/// Lookups served from the cache and lookups that went to the store, since
/// the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCounts {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Whether a record born at `born` is still within `ttl` at `now` (both in
/// the cache's whole seconds; a TTL under a second counts as one).
fn within(ttl: Duration, born: u32, now: u32) -> bool {
    u64::from(now.saturating_sub(born)) < ttl.as_secs().max(1)
}

#[derive(Clone)]
pub struct MirrorCache {
    /// Bucket number → its slot. A slot weighs its record count when it was
    /// inserted, so moka bounds records up to what slots have borrowed.
    inner: Cache<u32, Arc<Slot>>,
    locks: Arc<[BucketLock]>,
    /// Room for records added in place, held back from moka's capacity:
    /// moka's capacity plus this is `max_entries`. A slot borrows from it
    /// for each record beyond its weight and gives it back when it shrinks
    /// or moka drops it, so records never exceed `max_entries`.
    spare: Arc<AtomicI64>,
    /// Added to once per request or batch by the caller (see
    /// [`count`](Self::count)), not per lookup: a counter shared by every
    /// lookup would be a cache line both cores write.
    counts: Arc<Counters>,
    mask: u32,
    epoch: Instant,
    positive_ttl: Duration,
    negative_ttl: Duration,
    /// moka's time to live for a slot, in whole seconds.
    slot_ttl: u64,
}

/// One lookup in this many is also a moka `get` (see [`MirrorCache::lookup`]).
const READ_SAMPLE: u32 = 64;

/// Whether this lookup is the thread's one in [`READ_SAMPLE`] that moka sees.
fn sampled() -> bool {
    thread_local! {
        static LOOKUPS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    LOOKUPS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next.is_multiple_of(READ_SAMPLE)
    })
}

/// The share of `max_entries` held back as spare room (one eighth).
const SPARE_SHIFT: u32 = 3;
/// Records one slot may borrow before it is weighed again (by replacing it
/// in moka). More saves moka inserts; the spare room bounds the total.
const MAX_BORROWED: u32 = 4;

impl MirrorCache {
    pub fn new(cfg: CacheConfig) -> Self {
        // Small caches keep no spare room: every change replaces its slot,
        // and moka alone bounds the records exactly.
        let spare = if cfg.max_entries >= SMALL_CACHE {
            cfg.max_entries >> SPARE_SHIFT
        } else {
            0
        };
        let weighed = cfg.max_entries - spare;
        // A small cache gets about a bucket per record: moka evicts whole
        // buckets, and a lone bucket over capacity would empty the cache.
        let buckets = (weighed / BUCKET_TARGET)
            .max(weighed.min(SMALL_CACHE))
            .clamp(1, 1 << 31)
            .next_power_of_two();
        let spare = Arc::new(AtomicI64::new(spare as i64));
        let give_back = spare.clone();
        let locks: Arc<[BucketLock]> = (0..buckets).map(|_| BucketLock::default()).collect();
        let table = locks.clone();
        let slot_ttl = cfg.positive_ttl.max(cfg.negative_ttl);
        let inner = Cache::builder()
            .max_capacity(weighed)
            .weigher(|_, slot: &Arc<Slot>| slot.weighed)
            .time_to_live(slot_ttl)
            // Whatever the cause (evicted, expired, replaced, invalidated,
            // refused admission), the slot is out of moka: what it borrowed
            // goes back, nothing may be added to it any more, and lookups
            // stop seeing it. The two locks are taken one after the other,
            // never nested: lookups nest them the other way round.
            .eviction_listener(move |b: Arc<u32>, slot: Arc<Slot>, _| {
                {
                    let mut records = slot.write();
                    if !records.gone {
                        records.gone = true;
                        give_back
                            .fetch_add(i64::from(records.borrowed(slot.weighed)), Ordering::AcqRel);
                    }
                }
                if let Some(bucket) = table.get(*b as usize) {
                    bucket.forget(&slot);
                }
            })
            .build();
        Self {
            inner,
            locks,
            spare,
            counts: Arc::default(),
            mask: (buckets - 1) as u32,
            epoch: Instant::now(),
            positive_ttl: cfg.positive_ttl,
            negative_ttl: cfg.negative_ttl,
            slot_ttl: slot_ttl.as_secs().max(1),
        }
    }

    fn bucket_of(&self, key: &LookupKey) -> u32 {
        let k = &key.0;
        u32::from_le_bytes([k[0], k[1], k[2], k[3]]) & self.mask
    }

    fn state(&self, bucket: u32) -> &BucketLock {
        &self.locks[bucket as usize]
    }

    /// Locks `bucket` for a change; call [`BucketLock::changed`] once a
    /// change has replaced its slot in moka.
    fn lock(&self, bucket: u32) -> (&BucketLock, MutexGuard<'_, ()>) {
        let state = self.state(bucket);
        (state, state.lock())
    }

    /// Seconds since this cache was made: record timestamps are 4 bytes.
    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn live(&self, r: &Packed<'_>, now: u32) -> bool {
        let ttl = if r.is_positive() {
            self.positive_ttl
        } else {
            self.negative_ttl
        };
        within(ttl, r.born(), now)
    }

    /// Takes one record's room from the spare room, if any is left.
    fn borrow_one(&self) -> bool {
        if self.spare.fetch_sub(1, Ordering::AcqRel) > 0 {
            true
        } else {
            self.spare.fetch_add(1, Ordering::AcqRel);
            false
        }
    }

    fn give_back(&self, n: u32) {
        if n > 0 {
            self.spare.fetch_add(i64::from(n), Ordering::AcqRel);
        }
    }

    /// `Some(entry)` on a hit (which may be a negative entry), `None` on a miss.
    pub fn get(&self, key: &LookupKey) -> Option<CachedRecord> {
        match self.lookup(key) {
            Lookup::Hit(entry) => Some(entry),
            Lookup::Miss(_) => None,
        }
    }

    /// Like [`get`](Self::get), but a miss remembers what it saw, so that
    /// [`fill`](Self::fill) can usually skip reading the bucket again.
    ///
    /// The slot is read from the bucket, not through moka: moka's `get`
    /// (hashing, its table, and queueing the read for its access order and
    /// frequency sketch) was over half the cost of a hit, and a hit is most
    /// of a warm request's cache work. moka still decides what to keep, so
    /// it is told of one lookup in [`READ_SAMPLE`]: its access order and
    /// frequencies follow the same buckets, at a fraction of the cost.
    pub fn lookup(&self, key: &LookupKey) -> Lookup {
        let b = self.bucket_of(key);
        // Read before the bucket: any change after this point shows in them.
        let state = self.state(b);
        let invalidations = state.invalidations.load(Ordering::Acquire);
        let changes = state.changes.load(Ordering::Acquire);
        // Before the bucket's lock is taken: moka may run its maintenance,
        // and so its eviction listener, inside this call.
        if sampled() {
            self.inner.get(&b);
        }
        let now = self.now();
        let current = state.current();
        let seen = current.as_ref().filter(|slot| self.fresh(slot, now));
        if let Some(slot) = seen {
            let records = slot.read();
            if let Some(found) = records.find(&key.0)
                && self.live(&found, now)
            {
                return Lookup::Hit(found.record());
            }
        }
        let seen = seen.cloned();
        drop(current);
        Lookup::Miss(Miss {
            bucket: b,
            changes,
            invalidations,
            seen,
        })
    }

    /// [`lookup`](Self::lookup) of every key, in order, with the memory
    /// each will read fetched ahead.
    ///
    /// In a full cache a lookup is a chain of dependent reads, each a likely
    /// miss of the CPU's caches: the bucket, its slot, the slot's index, the
    /// record. One at a time, the core waits for each in turn; a warm
    /// stream's lookups were about a fifth of the gateway's CPU time, mostly
    /// in those waits. For a group of keys, each step of the chain is first
    /// requested for every key (a prefetch, a hint that never faults), so
    /// that the waits of the group overlap instead of adding up. Only
    /// addresses are read ahead; what a lookup decides is read again by
    /// `lookup` itself, so a bucket changed in between is seen as it is.
    pub fn lookup_many(&self, keys: &[LookupKey]) -> Vec<Lookup> {
        // Enough lookups in flight to cover a memory access, few enough for
        // their lines to stay cached until used.
        const GROUP: usize = 32;
        let mut out = Vec::with_capacity(keys.len());
        let mut ahead = Vec::with_capacity(GROUP.min(keys.len()));
        for group in keys.chunks(GROUP) {
            ahead.clear();
            ahead.extend(group.iter().map(|k| self.read_ahead(k)));
            for _ in 0..READ_AHEAD_STEPS {
                for a in &mut ahead {
                    a.step();
                }
            }
            out.extend(group.iter().map(|k| self.lookup(k)));
        }
        out
    }

    /// Starts reading one key's lookup ahead: the first step of the chain
    /// [`lookup_many`](Self::lookup_many) describes, the bucket, is
    /// requested now, and each [`ReadAhead::step`] requests the next one.
    /// A single request has no other lookups to overlap with, but it has
    /// its own work: calling a step between pieces of it (the probe's
    /// parsing and hashing) lets each wait run alongside that work.
    pub fn read_ahead(&self, key: &LookupKey) -> ReadAhead<'_> {
        let bucket = self.bucket_of(key);
        prefetch_object(self.state(bucket));
        ReadAhead {
            cache: self,
            bucket,
            key: *key,
            done: 1,
        }
    }

    /// The bucket's slot as lookups see it now.
    fn current(&self, b: u32) -> Option<Arc<Slot>> {
        let now = self.now();
        let current = self.state(b).current();
        current
            .as_ref()
            .filter(|slot| self.fresh(slot, now))
            .cloned()
    }

    /// Whether `slot` is within moka's time to live: past it, the slot is
    /// gone to moka even if moka has not dropped it yet.
    fn fresh(&self, slot: &Slot, now: u32) -> bool {
        u64::from(now.saturating_sub(slot.born)) < self.slot_ttl
    }

    pub fn insert(&self, key: LookupKey, value: Option<&MirrorRecord>) {
        let b = self.bucket_of(&key);
        self.fill(
            key,
            Miss {
                bucket: b,
                // Never matches a count read under the lock: the bucket is read.
                changes: u64::MAX,
                invalidations: self.state(b).invalidations.load(Ordering::Acquire),
                seen: None,
            },
            value,
        );
    }

    /// Caches `value`, read from the store after `key`'s lookup returned
    /// `miss`. If a key of the same bucket was invalidated in between, the
    /// value may be from before the import that caused it, so it is not
    /// cached (imports are rare, and a bucket holds a handful of keys).
    pub fn fill(&self, key: LookupKey, miss: Miss, value: Option<&MirrorRecord>) {
        if value.is_some_and(|r| r.tokens.len() > MAX_TOKENS) {
            // Cannot be packed whole; a cut token list would score differently
            // from the store's, so such a record is simply not cached.
            return;
        }
        let now = self.now();
        let b = miss.bucket;
        debug_assert_eq!(b, self.bucket_of(&key));
        let (state, _changing) = self.lock(b);
        if state.invalidations.load(Ordering::Acquire) != miss.invalidations {
            return;
        }
        // Not replaced since the lookup: what it saw is still the bucket's
        // slot (or moka has dropped it since, which `gone` tells).
        let slot = if state.changes.load(Ordering::Acquire) == miss.changes {
            miss.seen
        } else {
            self.current(b)
        };
        let len = packed_len(value);
        let mut new = match slot {
            Some(slot) => {
                let mut records = slot.write();
                if records.gone {
                    drop(records);
                    SlotRecords::with_capacity(len, 1)
                } else {
                    let before = records.borrowed(slot.weighed);
                    self.keep_others(&mut records, &key, now);
                    let kept = records.borrowed(slot.weighed);
                    self.give_back(before - kept);
                    let fits = records.count() < slot.weighed
                        || (kept < MAX_BORROWED && self.borrow_one());
                    if fits {
                        records.push(&key, now, value);
                        return;
                    }
                    // Weigh the bucket again: a new slot with all its records.
                    let mut new = SlotRecords::with_capacity(
                        records.bytes.len() + len,
                        records.index.len() + 1,
                    );
                    new.bytes.extend_from_slice(&records.bytes);
                    new.index.extend_from_slice(&records.index);
                    new.oldest = records.oldest;
                    new
                }
            }
            None => SlotRecords::with_capacity(len, 1),
        };
        new.push(&key, now, value);
        let slot = Slot::new(new, now);
        // Lookups see the new slot before moka has it: were it the other
        // way, moka could drop it (and its listener find nothing to clear)
        // before the bucket pointed at it. moka calls the listener for the
        // slot this replaces, which takes that slot's lock and the bucket's
        // current slot: neither is held here.
        state.set_current(Some(slot.clone()));
        self.inner.insert(b, slot);
        state.changed();
    }

    pub fn invalidate(&self, key: &LookupKey) {
        let now = self.now();
        let b = self.bucket_of(key);
        let (state, _changing) = self.lock(b);
        // Counted even when the key is not cached: a miss being filled now
        // may hold what the store said before the import.
        state.invalidating();
        let Some(slot) = self.current(b) else {
            return;
        };
        let mut records = slot.write();
        if records.gone || records.find(&key.0).is_none() {
            return;
        }
        let before = records.borrowed(slot.weighed);
        self.keep_others(&mut records, key, now);
        self.give_back(before - records.borrowed(slot.weighed));
        if records.count() == 0 {
            drop(records);
            state.set_current(None);
            self.inner.invalidate(&b);
            state.changed();
        }
    }

    /// Drops `key`'s record and the expired ones from a slot, in place: a
    /// change to one record also drops the bucket's expired ones.
    fn keep_others(&self, records: &mut SlotRecords, key: &LookupKey, now: u32) {
        // Most fills (every one of a cold pass) add a key the slot does not
        // hold to records none of which has expired: then there is nothing
        // to drop, and the index answers that without reading the records
        // themselves (a walk of the whole slot, mostly cache misses, was
        // about a quarter of a cold fill's cost).
        let none_expired = within(
            self.positive_ttl.min(self.negative_ttl),
            records.oldest,
            now,
        );
        if none_expired && records.find(&key.0).is_none() {
            return;
        }
        let SlotRecords {
            bytes,
            index,
            oldest,
            ..
        } = records;
        index.clear();
        *oldest = u32::MAX;
        let (mut read, mut write) = (0, 0);
        while let Some((len, keep, entry, born)) = Records(&bytes[read..]).next().map(|r| {
            let keep = r.key() != &key.0 && self.live(&r, now);
            (r.bytes.len(), keep, index_entry(r.key(), write), r.born())
        }) {
            if keep {
                if write != read {
                    bytes.copy_within(read..read + len, write);
                }
                index.push(entry);
                *oldest = (*oldest).min(born);
                write += len;
            }
            read += len;
        }
        bytes.truncate(write);
    }

    /// Empties the cache. Every bucket is held meanwhile, so that no fill
    /// under way can put back what was read before.
    pub fn invalidate_all(&self) {
        let held: Vec<_> = self.locks.iter().map(BucketLock::lock).collect();
        self.locks.iter().for_each(BucketLock::invalidating);
        // moka drops its entries lazily; lookups must stop seeing them now.
        self.locks.iter().for_each(|b| b.set_current(None));
        self.inner.invalidate_all();
        self.locks.iter().for_each(BucketLock::changed);
        drop(held);
    }

    /// Adds a request's or a batch's lookups to the counts.
    pub fn count(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.counts.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.counts.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    pub fn lookups(&self) -> LookupCounts {
        LookupCounts {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
        }
    }

    /// Records lookups can reach (including any expired ones not yet
    /// dropped), once moka's pending evictions have run.
    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.locks
            .iter()
            .filter_map(|b| {
                b.current()
                    .as_ref()
                    .map(|slot| u64::from(slot.read().count()))
            })
            .sum()
    }
}

// Packed record layout, all integers little-endian:
//   key [32] · born u32 · kind u8 (0 negative, 1 positive)
// and for a positive record:
//   status u8 · dob_precision u8 · token count u8 · key_id u16 ·
//   source_version i64 · name [16] · folded [16] · dob [16] · sex [16] ·
//   tokens [16] × count
const HEAD: usize = 32 + 4 + 1;
const FIXED: usize = 1 + 1 + 1 + 2 + 8 + 4 * 16;

/// Most tokens a packed record holds: the count is one byte. Real names
/// have a handful; `insert` leaves records with more uncached.
const MAX_TOKENS: usize = u8::MAX as usize;

/// How much of a record [`MirrorCache::lookup_many`] reads ahead: all of
/// one with three name tokens, the common case.
const READ_AHEAD: usize = HEAD + FIXED + 3 * 16;

/// Asks the CPU to bring the cache lines of `value` in.
fn prefetch_object<T>(value: &T) {
    let start = std::ptr::from_ref(value).cast::<u8>();
    prefetch_range(start, std::mem::size_of::<T>());
}

/// Asks the CPU to bring the cache lines of `items` in.
fn prefetch_slice<T>(items: &[T]) {
    prefetch_range(items.as_ptr().cast(), std::mem::size_of_val(items));
}

fn prefetch_range(start: *const u8, len: usize) {
    const LINE: usize = 64;
    let first = start as usize & !(LINE - 1);
    let end = start as usize + len.max(1);
    for line in (first..end).step_by(LINE) {
        prefetch_line(line as *const u8);
    }
}

#[inline(always)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64 itself, and a prefetch is only a hint:
    // it reads nothing into the program and never faults, whatever `at` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

fn packed_len(rec: Option<&MirrorRecord>) -> usize {
    HEAD + rec.map_or(0, |r| FIXED + 16 * r.tokens.len())
}

fn pack(out: &mut Vec<u8>, key: &LookupKey, born: u32, rec: Option<&MirrorRecord>) {
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&born.to_le_bytes());
    let Some(r) = rec else {
        out.push(0);
        return;
    };
    out.push(1);
    // `insert` keeps longer lists out; the count must fit its byte.
    debug_assert!(r.tokens.len() <= MAX_TOKENS);
    let tokens = &r.tokens[..r.tokens.len().min(MAX_TOKENS)];
    out.push(r.status.as_i16() as u8);
    out.push(r.dob_precision.as_i16() as u8);
    out.push(tokens.len() as u8);
    out.extend_from_slice(&r.key_id.to_le_bytes());
    out.extend_from_slice(&r.source_version.to_le_bytes());
    for h in [&r.name, &r.folded, &r.dob, &r.sex]
        .into_iter()
        .chain(tokens)
    {
        out.extend_from_slice(&h.0);
    }
}

/// One packed record inside a bucket.
struct Packed<'a> {
    bytes: &'a [u8],
}

impl Packed<'_> {
    fn key(&self) -> &[u8; 32] {
        self.bytes[..32].try_into().expect("32-byte key")
    }
    fn born(&self) -> u32 {
        u32::from_le_bytes(self.bytes[32..36].try_into().expect("4 bytes"))
    }
    fn is_positive(&self) -> bool {
        self.bytes[36] == 1
    }
    fn record(&self) -> Option<MirrorRecord> {
        if !self.is_positive() {
            return None;
        }
        let b = &self.bytes[HEAD..];
        let hash = |i: usize| {
            let at = FIXED - 4 * 16 + 16 * i;
            FieldHash(b[at..at + 16].try_into().expect("16 bytes"))
        };
        Some(MirrorRecord {
            // Only values `pack` wrote are here, so these cannot fail.
            status: RecordStatus::from_i16(i16::from(b[0])).unwrap_or(RecordStatus::Active),
            dob_precision: DobPrecision::from_i16(i16::from(b[1])).unwrap_or(DobPrecision::Day),
            key_id: u16::from_le_bytes([b[3], b[4]]),
            source_version: i64::from_le_bytes(b[5..13].try_into().expect("8 bytes")),
            name: hash(0),
            folded: hash(1),
            dob: hash(2),
            sex: hash(3),
            tokens: (0..usize::from(b[2])).map(|t| hash(4 + t)).collect(),
        })
    }
}

/// Walks the records of a bucket.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Packed<'a>;

    fn next(&mut self) -> Option<Packed<'a>> {
        // Only `pack` writes buckets; the length checks make a damaged one
        // end the walk instead of panicking.
        let len = match self.0.get(36)? {
            1 => HEAD + FIXED + 16 * usize::from(*self.0.get(HEAD + 2)?),
            _ => HEAD,
        };
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(Packed { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> LookupKey {
        // Spread over buckets like HMAC output would be.
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        k[8..16].copy_from_slice(&i.to_le_bytes());
        LookupKey(k)
    }

    fn record(i: u64, tokens: usize) -> MirrorRecord {
        let h = |t: u8| {
            let mut b = [t; 16];
            b[..8].copy_from_slice(&i.to_le_bytes());
            FieldHash(b)
        };
        MirrorRecord {
            name: h(1),
            folded: h(2),
            tokens: (0..tokens).map(|t| h((10 + t) as u8)).collect(),
            dob: h(3),
            dob_precision: if i.is_multiple_of(2) {
                DobPrecision::Day
            } else {
                DobPrecision::Year
            },
            sex: h(4),
            status: if i.is_multiple_of(3) {
                RecordStatus::Deceased
            } else {
                RecordStatus::Active
            },
            key_id: i as u16,
            source_version: -(i as i64),
        }
    }

    fn small() -> MirrorCache {
        MirrorCache::new(CacheConfig {
            max_entries: 1000,
            ..CacheConfig::default()
        })
    }

    #[test]
    fn records_come_back_as_they_went_in() {
        let cache = small();
        for i in 0..500 {
            let value = (i % 5 != 0).then(|| record(i, (i % 7) as usize));
            cache.insert(key(i), value.as_ref());
        }
        for i in 0..500 {
            let got = cache.get(&key(i)).expect("hit");
            if i % 5 == 0 {
                assert!(got.is_none(), "negative entry {i}");
            } else {
                assert_eq!(got.expect("positive entry"), record(i, (i % 7) as usize));
            }
        }
        assert!(cache.get(&key(10_000)).is_none());
        assert_eq!(cache.entry_count(), 500);
    }

    /// Keys 0..300, one in four a negative entry, and 20 records in
    /// bucket zero: buckets holding several records, and tags that collide.
    fn fill_mixed(cache: &MirrorCache) {
        for i in 0..300 {
            let value = (i % 4 != 0).then(|| record(i, (i % 6) as usize));
            cache.insert(key(i), value.as_ref());
            cache.insert(in_bucket_zero(i % 20), Some(&record(i % 20, 1)));
        }
    }

    #[test]
    fn lookups_of_many_keys_answer_as_one_lookup_each() {
        for cache in [small(), with_spare()] {
            fill_mixed(&cache);
            cache.invalidate(&key(9));
            // Cached and not, positive and negative, repeated, more than one
            // group of read-ahead, and an empty group's worth at the end.
            let keys: Vec<LookupKey> = (0..700u64)
                .map(|i| match i % 3 {
                    0 => key(i % 400),
                    1 => in_bucket_zero(i % 30),
                    _ => key(9),
                })
                .collect();
            let many = cache.lookup_many(&keys);
            assert_eq!(many.len(), keys.len());
            let mut misses = Vec::new();
            for (k, got) in keys.iter().zip(many) {
                match (got, cache.lookup(k)) {
                    (Lookup::Hit(a), Lookup::Hit(b)) => assert_eq!(a, b),
                    (Lookup::Miss(miss), Lookup::Miss(_)) => misses.push((*k, miss)),
                    _ => panic!("the batch and a single lookup disagree"),
                }
            }
            assert!(!misses.is_empty());
            // A miss from the batch fills like a single lookup's.
            misses.dedup_by_key(|(k, _)| *k);
            let (k, miss) = misses.swap_remove(0);
            cache.fill(k, miss, Some(&record(77, 2)));
            assert_eq!(cache.get(&k).flatten(), Some(record(77, 2)));
            assert!(cache.lookup_many(&[]).is_empty());
        }
    }

    #[test]
    fn reading_a_lookup_ahead_changes_nothing_it_finds() {
        for cache in [small(), with_spare()] {
            fill_mixed(&cache);
            // Present, negative, absent from a bucket that holds others,
            // and a bucket changed between the steps.
            for k in [
                key(5),
                key(8),
                key(5000),
                in_bucket_zero(25),
                in_bucket_zero(3),
            ] {
                let before = cache.get(&k);
                let mut ahead = cache.read_ahead(&k);
                ahead.step();
                cache.insert(in_bucket_zero(40), Some(&record(40, 2)));
                // More steps than the chain has.
                for _ in 0..4 {
                    ahead.step();
                }
                assert_eq!(cache.get(&k), before);
            }
        }
    }

    #[test]
    fn insert_replaces_and_invalidate_removes_one_key() {
        let cache = small();
        for i in 0..200 {
            cache.insert(key(i), Some(&record(i, 3)));
        }
        cache.insert(key(7), None);
        assert_eq!(cache.get(&key(7)), Some(None));
        cache.invalidate(&key(8));
        assert_eq!(cache.get(&key(8)), None);
        cache.invalidate(&key(8));
        for i in (0..200).filter(|&i| i != 7 && i != 8) {
            assert_eq!(cache.get(&key(i)).flatten(), Some(record(i, 3)));
        }
        assert_eq!(cache.entry_count(), 199);
        cache.invalidate_all();
        assert_eq!(cache.get(&key(9)), None);
    }

    #[test]
    fn ttls_hold_per_record() {
        let cache = MirrorCache::new(CacheConfig {
            max_entries: 100,
            positive_ttl: Duration::from_secs(1),
            // The slot's time to live is the longer one: it outlives the record.
            negative_ttl: Duration::from_secs(60),
        });
        // A record that is already old: its bucket is young, it is not.
        let mut records = SlotRecords::with_capacity(0, 1);
        records.push(&key(1), 0, Some(&record(1, 2)));
        let b = cache.bucket_of(&key(1));
        let slot = Slot::new(records, cache.now());
        cache.state(b).set_current(Some(slot.clone()));
        cache.inner.insert(b, slot);
        assert!(cache.get(&key(1)).is_some());
        let later = MirrorCache {
            epoch: cache.epoch - Duration::from_secs(5),
            ..cache.clone()
        };
        assert_eq!(later.get(&key(1)), None, "expired record must miss");
    }

    #[test]
    fn a_fill_drops_the_records_that_expired_and_only_those() {
        let cache = MirrorCache::new(CacheConfig {
            max_entries: 100,
            positive_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(60),
        });
        let b = cache.bucket_of(&in_bucket_zero(1));
        cache.insert(in_bucket_zero(1), Some(&record(1, 2)));
        cache.insert(in_bucket_zero(2), None);
        let count = |c: &MirrorCache| c.current(b).map_or(0, |s| s.read().count());
        // Nothing has expired yet: a fill of a new key keeps both.
        cache.insert(in_bucket_zero(3), None);
        assert_eq!(count(&cache), 3);
        // Five seconds on, the positive record is past its TTL, the negative
        // ones are not: the next fill drops just the one.
        let later = MirrorCache {
            epoch: cache.epoch - Duration::from_secs(5),
            ..cache.clone()
        };
        later.insert(in_bucket_zero(4), None);
        assert_eq!(count(&later), 3);
        assert_eq!(later.get(&in_bucket_zero(1)), None);
        for i in 2..=4 {
            assert_eq!(later.get(&in_bucket_zero(i)), Some(None), "key {i}");
        }
    }

    #[test]
    fn a_small_cache_evicts_records_not_everything() {
        let cache = MirrorCache::new(CacheConfig {
            max_entries: 10,
            ..CacheConfig::default()
        });
        for i in 0..11 {
            cache.insert(key(i), Some(&record(i, 2)));
        }
        assert!(cache.entry_count() <= 10);
        let kept = (0..11).filter(|&i| cache.get(&key(i)).is_some()).count();
        assert!((5..=10).contains(&kept), "{kept} of 11 kept");
    }

    /// Keys that all fall in bucket 0.
    fn in_bucket_zero(i: u64) -> LookupKey {
        let mut k = [0u8; 32];
        k[8..16].copy_from_slice(&i.to_le_bytes());
        LookupKey(k)
    }

    fn missed(cache: &MirrorCache, k: &LookupKey) -> Miss {
        match cache.lookup(k) {
            Lookup::Miss(miss) => miss,
            Lookup::Hit(_) => panic!("the key is cached"),
        }
    }

    #[test]
    fn an_undisturbed_fill_keeps_the_bucket_it_saw() {
        // With spare room the fills change slots in place; without, they replace them.
        for cache in [small(), with_spare()] {
            let (a, c) = (in_bucket_zero(1), in_bucket_zero(3));
            cache.insert(a, Some(&record(1, 2)));
            let miss = missed(&cache, &c);
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&a).flatten(), Some(record(1, 2)));
            assert_eq!(cache.get(&c).flatten(), Some(record(3, 2)));
            assert_eq!(cache.entry_count(), 2);
        }
    }

    #[test]
    fn a_fill_keeps_the_inserts_made_since_its_lookup() {
        // With spare room the fills change slots in place; without, they replace them.
        for cache in [small(), with_spare()] {
            let (a, c, d) = (in_bucket_zero(1), in_bucket_zero(3), in_bucket_zero(4));
            cache.insert(a, Some(&record(1, 2)));
            let miss = missed(&cache, &c);
            // Another request's fill while this one's store read was under way.
            cache.insert(d, None);
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&a).flatten(), Some(record(1, 2)));
            assert_eq!(cache.get(&c).flatten(), Some(record(3, 2)));
            assert_eq!(cache.get(&d), Some(None), "a newer insert was lost");
        }
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_not_cached() {
        // With spare room the fills change slots in place; without, they replace them.
        for cache in [small(), with_spare()] {
            let (a, b, c) = (in_bucket_zero(1), in_bucket_zero(2), in_bucket_zero(3));
            cache.insert(a, Some(&record(1, 2)));
            cache.insert(b, Some(&record(2, 2)));
            // An import changed `c` while its store read was under way: what
            // the read returned may be the old record.
            let miss = missed(&cache, &c);
            cache.invalidate(&c);
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&c), None, "a possibly stale record was cached");
            // Nor does a fill undo an invalidation of another record.
            let miss = missed(&cache, &c);
            cache.invalidate(&a);
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&a), None, "an invalidated record came back");
            assert_eq!(cache.get(&b).flatten(), Some(record(2, 2)));
            // A lookup after the invalidation fills as usual.
            let miss = missed(&cache, &c);
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&c).flatten(), Some(record(3, 2)));
        }
    }

    #[test]
    fn a_fill_after_clearing_brings_nothing_back() {
        // With spare room the fills change slots in place; without, they replace them.
        for cache in [small(), with_spare()] {
            let (a, c) = (in_bucket_zero(1), in_bucket_zero(3));
            cache.insert(a, Some(&record(1, 2)));
            let miss = missed(&cache, &c);
            cache.invalidate_all();
            cache.fill(c, miss, Some(&record(3, 2)));
            assert_eq!(cache.get(&a), None, "a cleared record came back");
            assert_eq!(cache.get(&c), None, "a possibly stale record was cached");
        }
    }

    #[test]
    fn records_too_large_to_pack_are_not_cached() {
        let cache = small();
        cache.insert(key(1), Some(&record(1, 300)));
        assert_eq!(cache.get(&key(1)), None);
        cache.insert(key(2), Some(&record(2, 255)));
        assert_eq!(cache.get(&key(2)), Some(Some(record(2, 255))));
    }

    #[test]
    fn a_damaged_bucket_ends_the_walk() {
        let mut bytes = Vec::new();
        pack(&mut bytes, &key(1), 0, Some(&record(1, 3)));
        pack(&mut bytes, &key(2), 0, Some(&record(2, 3)));
        for cut in 0..bytes.len() {
            let n = Records(&bytes[..cut]).count();
            assert!(n <= 1, "cut at {cut}");
        }
        assert_eq!(Records(&bytes).count(), 2);
    }

    /// A cache large enough to keep spare room (see `MirrorCache::spare`).
    fn with_spare() -> MirrorCache {
        MirrorCache::new(CacheConfig {
            max_entries: 4096,
            ..CacheConfig::default()
        })
    }

    fn spare(cache: &MirrorCache) -> i64 {
        cache.inner.run_pending_tasks();
        cache.spare.load(Ordering::Acquire)
    }

    #[test]
    fn a_fill_with_room_adds_to_its_slot_in_place() {
        let cache = with_spare();
        let (a, c) = (in_bucket_zero(1), in_bucket_zero(3));
        cache.insert(a, Some(&record(1, 2)));
        let slot = cache.current(0).expect("bucket 0");
        let changes = cache.state(0).changes.load(Ordering::Acquire);
        let miss = missed(&cache, &c);
        cache.fill(c, miss, Some(&record(3, 2)));
        // The same slot, not replaced in moka, now holds both, one borrowed.
        assert!(Arc::ptr_eq(&slot, &cache.current(0).expect("bucket 0")));
        assert_eq!(cache.state(0).changes.load(Ordering::Acquire), changes);
        assert_eq!(cache.get(&a).flatten(), Some(record(1, 2)));
        assert_eq!(cache.get(&c).flatten(), Some(record(3, 2)));
        assert_eq!(spare(&cache), 512 - 1);
        // Filling the same key again replaces its record, borrowing nothing more.
        cache.insert(c, None);
        assert_eq!(cache.get(&c), Some(None));
        assert_eq!(spare(&cache), 512 - 1);
        assert_eq!(cache.entry_count(), 2);
    }

    #[test]
    fn a_slot_that_borrowed_enough_is_weighed_again() {
        let cache = with_spare();
        for i in 1..=1 + MAX_BORROWED as u64 {
            cache.insert(in_bucket_zero(i), None);
        }
        let slot = cache.current(0).expect("bucket 0");
        assert_eq!(slot.weighed, 1);
        assert_eq!(spare(&cache), 512 - i64::from(MAX_BORROWED));
        cache.insert(in_bucket_zero(100), None);
        // Replaced by a slot that moka weighs with all its records; what the
        // old one borrowed is back.
        let slot = cache.current(0).expect("bucket 0");
        assert_eq!(slot.weighed, 2 + MAX_BORROWED);
        assert_eq!(spare(&cache), 512);
        assert_eq!(cache.entry_count(), 2 + u64::from(MAX_BORROWED));
    }

    #[test]
    fn dropped_slots_give_back_what_they_borrowed() {
        let cache = with_spare();
        for i in 0..300 {
            cache.insert(key(i), None);
            cache.insert(in_bucket_zero(i), Some(&record(i, 1)));
        }
        assert!(spare(&cache) < 512);
        // An invalidation that empties a bucket, then everything.
        let lone = key(1_000_000);
        let b = cache.bucket_of(&lone);
        cache.invalidate_all();
        cache.insert(lone, None);
        cache.invalidate(&lone);
        assert!(cache.inner.get(&b).is_none());
        assert!(cache.current(b).is_none());
        assert_eq!(spare(&cache), 512);
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn borrowing_never_takes_records_past_max_entries() {
        let cache = with_spare();
        for i in 0..50_000 {
            cache.insert(key(i), Some(&record(i, 1)));
            if i % 1000 == 999 {
                let held = cache.entry_count();
                assert!(held <= 4096, "{held} records held after {i} inserts");
                assert!(spare(&cache) >= 0);
            }
        }
        // Evicting whole buckets leaves room, but not most of it.
        assert!(cache.entry_count() >= 2048, "{}", cache.entry_count());
    }

    #[test]
    fn a_slot_past_its_time_to_live_is_not_read_and_is_replaced() {
        let cache = MirrorCache::new(CacheConfig {
            max_entries: 100,
            positive_ttl: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(1),
        });
        cache.insert(key(1), Some(&record(1, 2)));
        let b = cache.bucket_of(&key(1));
        let old = cache.current(b).expect("a slot");
        // Three seconds on: past the slot's time to live, which moka has
        // not acted on yet.
        let later = MirrorCache {
            epoch: cache.epoch - Duration::from_secs(3),
            ..cache.clone()
        };
        assert!(later.current(b).is_none());
        let Lookup::Miss(miss) = later.lookup(&key(1)) else {
            panic!("an expired slot must miss");
        };
        later.fill(key(1), miss, Some(&record(1, 2)));
        let new = later.current(b).expect("a new slot");
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(later.get(&key(1)).flatten(), Some(record(1, 2)));
    }

    #[test]
    fn lookups_racing_fills_evictions_and_invalidations_stay_right_and_bounded() {
        // Two caches: one whose fills replace slots, one that changes them
        // in place with spare room. Small enough that moka evicts all along.
        for max_entries in [500, 4096] {
            let cache = MirrorCache::new(CacheConfig {
                max_entries,
                ..CacheConfig::default()
            });
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let cache = &cache;
                    s.spawn(move || {
                        for n in 0..20_000u64 {
                            let i = (n * 7919 + t * 104_729) % 12_000;
                            match cache.lookup(&key(i)) {
                                // A hit is always the record of its own key.
                                Lookup::Hit(hit) => {
                                    assert_eq!(hit, (i % 5 != 0).then(|| record(i, 2)));
                                }
                                Lookup::Miss(miss) => {
                                    let value = (i % 5 != 0).then(|| record(i, 2));
                                    cache.fill(key(i), miss, value.as_ref());
                                }
                            }
                            if t == 0 && n % 97 == 0 {
                                cache.invalidate(&key(n % 12_000));
                            }
                        }
                    });
                }
            });
            // Under concurrent replacing writes, moka's weighted size can
            // stay at its capacity while the weights of the entries it holds
            // add up to a little more (up to 0.2% in this test, with or
            // without spare room). That slack is moka's; the records
            // reachable here are exactly those of the slots moka holds.
            let reachable = cache.entry_count();
            assert!(
                reachable <= max_entries + max_entries / 100,
                "{reachable} records reachable, {max_entries} allowed"
            );
            let in_moka: u64 = cache
                .inner
                .iter()
                .map(|(_, slot)| u64::from(slot.read().count()))
                .sum();
            assert_eq!(reachable, in_moka);
            assert!(cache.spare.load(Ordering::Acquire) >= 0);
            // Every slot lookups can reach is one moka still holds.
            for b in 0..=cache.mask {
                if let Some(slot) = cache.current(b) {
                    assert!(!slot.read().gone, "bucket {b} points at a dropped slot");
                    let held = cache.inner.get(&b).expect("moka holds it");
                    assert!(Arc::ptr_eq(&slot, &held));
                }
            }
        }
    }

    #[test]
    fn records_are_found_after_others_are_dropped_around_them() {
        // One bucket, keys alike in their first eight bytes: the index's
        // tags all match, so only the whole key tells them apart.
        for cache in [small(), with_spare()] {
            for i in 0..10 {
                cache.insert(
                    in_bucket_zero(i),
                    (i % 3 != 0).then(|| record(i, i as usize)).as_ref(),
                );
            }
            for gone in [0, 4, 9] {
                cache.invalidate(&in_bucket_zero(gone));
            }
            for i in 0..10 {
                let expected =
                    (![0, 4, 9].contains(&i)).then(|| (i % 3 != 0).then(|| record(i, i as usize)));
                assert_eq!(cache.get(&in_bucket_zero(i)), expected, "key {i}");
            }
            assert_eq!(cache.entry_count(), 7);
        }
    }

    #[test]
    fn capacity_bounds_records() {
        let cache = small();
        for i in 0..20_000 {
            cache.insert(key(i), Some(&record(i, 3)));
        }
        assert!(cache.entry_count() <= 1000, "{}", cache.entry_count());
    }
}
