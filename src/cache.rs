//! moka in front of the mirror: positive entries (the record) and negative
//! entries (the ID is not in the mirror), size-bounded with a TTL each.
//!
//! Imports invalidate what they changed through [`MirrorCache::invalidate`],
//! driven by the mirror watcher in `verifier`. The TTL bounds how long an
//! entry fetched just before an import can outlive it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::domain::{LookupKey, MirrorRecord};

/// `None` is a negative entry.
pub type CachedRecord = Option<Arc<MirrorRecord>>;

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

struct Ttl {
    positive: Duration,
    negative: Duration,
}

impl moka::Expiry<LookupKey, CachedRecord> for Ttl {
    fn expire_after_create(&self, _: &LookupKey, v: &CachedRecord, _: Instant) -> Option<Duration> {
        Some(if v.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

#[derive(Clone)]
pub struct MirrorCache {
    inner: Cache<LookupKey, CachedRecord>,
}

impl MirrorCache {
    pub fn new(cfg: CacheConfig) -> Self {
        let inner = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(Ttl {
                positive: cfg.positive_ttl,
                negative: cfg.negative_ttl,
            })
            .build();
        Self { inner }
    }

    /// `Some(entry)` on a hit (which may be a negative entry), `None` on a miss.
    pub fn get(&self, key: &LookupKey) -> Option<CachedRecord> {
        self.inner.get(key)
    }

    pub fn insert(&self, key: LookupKey, value: CachedRecord) {
        self.inner.insert(key, value);
    }

    pub fn invalidate(&self, key: &LookupKey) {
        self.inner.invalidate(key);
    }

    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}
