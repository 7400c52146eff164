//! The audit log's Merkle tree over the store: tiles, signed checkpoints,
//! proofs, and the full re-verification an auditor runs.

use std::collections::HashMap;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::Digest;

use crate::domain::merkle::{self, Hash, TILE, TreeSource};
use crate::store::Store;
use crate::store::{StoreError, StoredCheckpoint};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log has no record at position {0} (it is incomplete or was altered)")]
    Missing(u64),
    #[error("the signing key is unusable: {0}")]
    Key(String),
}

/// The checkpoint signer: an Ed25519 key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// Short id of a public key: the first 8 hex digits of its SHA-256.
pub fn key_id_of(public: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(public)[..4])
}

impl Signer {
    /// Loads a PKCS#8 key (hex) from `path`, creating one there when missing
    /// and `create` is set.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Self, LogError> {
        if !path.exists() && create {
            let rng = ring::rand::SystemRandom::new();
            let doc =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| LogError::Key(e.to_string()))?;
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).map_err(|e| LogError::Key(e.to_string()))?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(path)
                .map_err(|e| LogError::Key(format!("cannot create {}: {e}", path.display())))?;
            std::io::Write::write_all(
                &mut f,
                format!("{}\n", hex::encode(doc.as_ref())).as_bytes(),
            )
            .map_err(|e| LogError::Key(e.to_string()))?;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| LogError::Key(format!("cannot read {}: {e}", path.display())))?;
        let der = hex::decode(text.trim())
            .map_err(|_| LogError::Key(format!("{} is not hex", path.display())))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| LogError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes")
    }

    pub fn key_id(&self) -> String {
        key_id_of(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, size: u64, root: &Hash, at: i64) -> StoredCheckpoint {
        let msg = merkle::checkpoint_message(size, root, at);
        StoredCheckpoint {
            size,
            root: *root,
            signed_at: at,
            key_id: self.key_id(),
            signature: self.pair.sign(msg.as_bytes()).as_ref().to_vec(),
        }
    }
}

/// Checks a checkpoint's signature against a public key.
pub fn verify_checkpoint(public: &[u8; 32], c: &StoredCheckpoint) -> bool {
    let msg = merkle::checkpoint_message(c.size, &c.root, c.signed_at);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(msg.as_bytes(), &c.signature)
        .is_ok()
}

/// The part of the tree a computation needs: stored tile hashes plus the
/// leaf hashes of a few tiles.
pub struct TreeView {
    tiles: Vec<Hash>,
    leaves: HashMap<u64, Hash>,
}

impl TreeSource for TreeView {
    fn leaf(&self, i: u64) -> Hash {
        // `load` fetched every tile the computation descends into.
        self.leaves[&i]
    }
    fn tile(&self, t: u64) -> Option<Hash> {
        self.tiles.get(t as usize).copied()
    }
}

/// Tiles computed from stored leaves per read: 64 tiles are 16,384 leaf
/// hashes, half a megabyte.
const FILL_TILES: u64 = 64;

/// Stores the hash of every complete tile below `size` not stored yet.
/// Returns the hashes of every complete tile below `size`, in order.
///
/// The indexer stores most tiles with their records (`TileBuilder`); what
/// is left here are the tiles its runs did not complete (a restart, another
/// gateway's records between its own, a log written before tiles were
/// built that way), computed from the stored leaves, many tiles a read.
pub async fn ensure_tiles(store: &Store, size: u64) -> Result<Vec<Hash>, LogError> {
    ensure_tile_range(store, 0, size / TILE).await
}

/// [`ensure_tiles`] for tiles `from..below` only.
async fn ensure_tile_range(store: &Store, from: u64, below: u64) -> Result<Vec<Hash>, LogError> {
    let mut tiles: Vec<Option<Hash>> = vec![None; below.saturating_sub(from) as usize];
    for (t, h) in store.audit_tiles(from, below).await? {
        if let Some(slot) = tiles.get_mut(t.saturating_sub(from) as usize) {
            *slot = Some(h);
        }
    }
    let pruned = store.audit_pruned_before().await?;
    let want = tiles.len() as u64;
    let mut t = 0;
    while t < want {
        if tiles[t as usize].is_some() {
            t += 1;
            continue;
        }
        let mut end = t + 1;
        while end < want && end - t < FILL_TILES && tiles[end as usize].is_none() {
            end += 1;
        }
        let leaves = full_leaves(store, pruned, (from + t) * TILE, (from + end) * TILE).await?;
        let new: Vec<(u64, Hash)> = (t..end)
            .map(|k| {
                let lo = (k - t) * TILE;
                (from + k, merkle::subtree(&leaves, lo, lo + TILE))
            })
            .collect();
        for (k, h) in (t..end).zip(&new) {
            tiles[k as usize] = Some(h.1);
        }
        store.put_audit_tiles(&new).await?;
        t = end;
    }
    Ok(tiles
        .into_iter()
        .map(|h| h.expect("every tile is filled"))
        .collect())
}

/// The leaf hashes of positions `lo..hi`, from the records or, below the
/// retention boundary `pruned`, from the kept hashes.
async fn full_leaves(store: &Store, pruned: u64, lo: u64, hi: u64) -> Result<Vec<Hash>, LogError> {
    let mut rows: Vec<(u64, Option<Hash>)> = if lo < pruned {
        store
            .audit_pruned_leaves(lo, hi.min(pruned))
            .await?
            .into_iter()
            .map(|(i, h)| (i, Some(h)))
            .collect()
    } else {
        Vec::new()
    };
    if hi > pruned {
        rows.extend(store.audit_leaf_hashes(lo.max(pruned), hi).await?);
    }
    let mut out = Vec::with_capacity((hi - lo) as usize);
    for (k, (i, h)) in rows.into_iter().enumerate() {
        match h {
            Some(h) if i == lo + k as u64 => out.push(h),
            _ => return Err(LogError::Missing(lo + k as u64)),
        }
    }
    if out.len() as u64 != hi - lo {
        return Err(LogError::Missing(lo + out.len() as u64));
    }
    Ok(out)
}

impl TreeView {
    /// Loads what a root, or proofs touching the leaves in `positions`,
    /// of the tree of `size` leaves need.
    pub async fn load(store: &Store, size: u64, positions: &[u64]) -> Result<Self, LogError> {
        let tiles = ensure_tiles(store, size).await?;
        let pruned = store.audit_pruned_before().await?;
        let mut wanted: Vec<u64> = positions.iter().map(|p| p / TILE).collect();
        if !size.is_multiple_of(TILE) {
            wanted.push(size / TILE);
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut leaves = HashMap::new();
        for t in wanted {
            let lo = t * TILE;
            let hi = ((t + 1) * TILE).min(size);
            for (k, h) in full_leaves(store, pruned, lo, hi)
                .await?
                .into_iter()
                .enumerate()
            {
                leaves.insert(lo + k as u64, h);
            }
        }
        Ok(Self { tiles, leaves })
    }
}

/// Publishes a checkpoint of the current log if it grew since the last one;
/// returns the latest checkpoint either way. Reads every tile: a caller
/// that publishes again and again keeps a [`CheckpointPublisher`] instead.
pub async fn publish_checkpoint(
    store: &Store,
    signer: &Signer,
) -> Result<Option<StoredCheckpoint>, LogError> {
    CheckpointPublisher::default().publish(store, signer).await
}

/// Publishes checkpoints again and again (the gateway's minutely task),
/// keeping what it has read of the log between them: the complete tiles
/// folded into a [`merkle::Frontier`], so that each checkpoint reads only
/// the tiles completed since the last one and the leaves of the last,
/// incomplete tile, however long the log has grown. Reading every tile each
/// time took over a second at 7.4M records on a busy machine.
#[derive(Default)]
pub struct CheckpointPublisher {
    frontier: merkle::Frontier,
}

impl CheckpointPublisher {
    /// Publishes a checkpoint of the current log if it grew since the
    /// last one; returns the latest checkpoint either way.
    pub async fn publish(
        &mut self,
        store: &Store,
        signer: &Signer,
    ) -> Result<Option<StoredCheckpoint>, LogError> {
        let size = store.audit_size().await?;
        let latest = store.audit_checkpoint(None).await?;
        if latest.as_ref().is_some_and(|c| c.size == size) || size == 0 {
            return Ok(latest);
        }
        let complete = size / TILE;
        if self.frontier.tiles() > complete {
            // Fewer tiles than were folded: not the log it folded.
            self.frontier = merkle::Frontier::default();
        }
        for h in ensure_tile_range(store, self.frontier.tiles(), complete).await? {
            self.frontier.push_tile(h);
        }
        let pruned = store.audit_pruned_before().await?;
        let tail = full_leaves(store, pruned, complete * TILE, size).await?;
        let root = self.frontier.root(&tail);
        let c = signer.sign(size, &root, crate::clock::now_micros());
        store.put_audit_checkpoint(&c).await?;
        Ok(Some(c))
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Size of the log (positions `0..records`).
    pub records: u64,
    /// Positions before this were removed by retention.
    pub pruned: u64,
    pub root: Hash,
    pub checkpoints: usize,
    /// The first problem, with the first position it affects.
    pub problem: Option<(u64, String)>,
}

/// Recomputes the whole log from the stored records: every record's hash
/// from its content and position, every tile, and every checkpoint's root
/// (and signature, given the public key). Stops at the first problem.
pub async fn verify_log(
    store: &Store,
    public: Option<&[u8; 32]>,
) -> Result<Verification, LogError> {
    let checkpoints = store.audit_checkpoints().await?;
    // By tile number: writers store tiles as they complete them, so the
    // stored ones need not be a prefix.
    let stored_tiles: std::collections::BTreeMap<u64, Hash> = store
        .audit_tiles(0, u64::MAX / TILE)
        .await?
        .into_iter()
        .collect();
    let head = store.audit_size().await?;
    let fail = |pos: u64, what: String, records: u64| Verification {
        records,
        pruned: 0,
        root: [0; 32],
        checkpoints: checkpoints.len(),
        problem: Some((pos, what)),
    };
    if let Some(pk) = public {
        for c in &checkpoints {
            if !verify_checkpoint(pk, c) {
                return Ok(fail(
                    c.size,
                    format!("the checkpoint of size {} has an invalid signature", c.size),
                    0,
                ));
            }
        }
    }
    // After retention, the log starts at `start`: what came before is
    // represented by stored tiles and the kept leaf hashes, which must still
    // reproduce every older checkpoint.
    let start = store.audit_pruned_before().await?;
    let mut tiles: Vec<Hash> = (0..start / TILE)
        .map_while(|t| stored_tiles.get(&t).copied())
        .collect();
    if (tiles.len() as u64) < start / TILE {
        return Ok(fail(
            tiles.len() as u64 * TILE,
            "tile hashes of pruned records are missing".into(),
            0,
        ));
    }
    let kept: Vec<(u64, Hash)> = store.audit_pruned_leaves(0, start).await?;
    for c in checkpoints.iter().filter(|c| c.size <= start) {
        let base = c.size / TILE * TILE;
        let partial: Vec<Hash> = kept
            .iter()
            .filter(|(i, _)| *i >= base && *i < c.size)
            .map(|(_, h)| *h)
            .collect();
        if partial.len() as u64 != c.size - base {
            return Ok(fail(
                base,
                format!(
                    "kept hashes for the checkpoint of size {} are missing",
                    c.size
                ),
                0,
            ));
        }
        let view = Recomputed {
            tiles: &tiles,
            partial: &partial,
            base,
        };
        if merkle::root(&view, c.size) != c.root {
            return Ok(fail(
                0,
                format!(
                    "the retained hashes do not match the checkpoint of size {}",
                    c.size
                ),
                0,
            ));
        }
    }
    let base = start / TILE * TILE;
    let mut partial: Vec<Hash> = kept
        .iter()
        .filter(|(i, _)| *i >= base)
        .map(|(_, h)| *h)
        .collect();
    if partial.len() as u64 != start - base {
        return Ok(fail(
            base,
            "kept hashes at the retention boundary are missing".into(),
            0,
        ));
    }
    let mut next = start;
    let mut cps = checkpoints
        .iter()
        .filter(|c| c.size > start)
        .collect::<Vec<_>>()
        .into_iter()
        .peekable();
    let check_checkpoints = |n: u64,
                             tiles: &[Hash],
                             partial: &[Hash],
                             cps: &mut std::iter::Peekable<
        std::vec::IntoIter<&StoredCheckpoint>,
    >|
     -> Option<String> {
        while let Some(c) = cps.peek() {
            if c.size > n {
                break;
            }
            if c.size == n {
                let view = Recomputed {
                    tiles,
                    partial,
                    base: n / TILE * TILE,
                };
                if merkle::root(&view, n) != c.root {
                    return Some(format!(
                        "the log's first {n} records do not match the checkpoint signed at {} (a record before position {n} was changed, inserted, removed or moved)",
                        c.signed_at
                    ));
                }
            }
            cps.next();
        }
        None
    };
    if let Some(msg) = check_checkpoints(start, &tiles, &partial, &mut cps) {
        return Ok(fail(start, msg, 0));
    }
    loop {
        let batch = store.audit_records_from(next, 5000).await?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.index != next {
                return Ok(fail(
                    next,
                    format!("the record at position {next} is missing (deleted?)"),
                    next,
                ));
            }
            if r.index >= head {
                return Ok(fail(
                    next,
                    format!(
                        "the record at position {next} ({}) lies beyond the log's head of {head} (inserted?)",
                        r.record.audit_id
                    ),
                    next,
                ));
            }
            let h = merkle::leaf_hash(r.index, &r.record);
            if r.leaf_hash != Some(h) {
                return Ok(fail(
                    next,
                    format!(
                        "the record at position {next} ({}) does not match its leaf hash (edited or moved)",
                        r.record.audit_id
                    ),
                    next,
                ));
            }
            partial.push(h);
            next += 1;
            if partial.len() as u64 == TILE {
                let t = merkle::subtree(&partial, 0, TILE);
                let idx = tiles.len();
                if stored_tiles.get(&(idx as u64)).is_some_and(|s| *s != t) {
                    return Ok(fail(
                        idx as u64 * TILE,
                        format!(
                            "records {}..{} do not match their stored tile hash (changed or moved)",
                            idx as u64 * TILE,
                            (idx as u64 + 1) * TILE
                        ),
                        next,
                    ));
                }
                tiles.push(t);
                partial.clear();
            }
            if let Some(msg) = check_checkpoints(next, &tiles, &partial, &mut cps) {
                let from = tiles.len() as u64 * TILE;
                return Ok(fail(from.min(next.saturating_sub(1)), msg, next));
            }
        }
    }
    if next < head {
        return Ok(fail(
            next,
            format!(
                "the log holds {next} records but its head says {head}: records from position {next} are missing (truncated?)"
            ),
            next,
        ));
    }
    if let Some(c) = cps.peek() {
        return Ok(fail(
            next,
            format!(
                "the log ends at {next} records but a signed checkpoint covers {}: records from position {next} are missing (truncated?)",
                c.size
            ),
            next,
        ));
    }
    let view = Recomputed {
        tiles: &tiles,
        partial: &partial,
        base: tiles.len() as u64 * TILE,
    };
    Ok(Verification {
        records: next,
        pruned: start,
        root: merkle::root(&view, next),
        checkpoints: checkpoints.len(),
        problem: None,
    })
}

/// Recomputed tiles plus the leaves of the tile in progress.
struct Recomputed<'a> {
    tiles: &'a [Hash],
    partial: &'a [Hash],
    base: u64,
}

impl TreeSource for Recomputed<'_> {
    fn leaf(&self, i: u64) -> Hash {
        self.partial[(i - self.base) as usize]
    }
    fn tile(&self, t: u64) -> Option<Hash> {
        self.tiles.get(t as usize).copied()
    }
}

/// What retention removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// The log now starts at this position.
    pub start: u64,
    pub removed: u64,
}

/// Removes audit records from before `cutoff_us`, keeping the log
/// verifiable: a checkpoint covering them is published first, their tiles
/// are stored, and the leaf hashes of every tile the boundary (or an older
/// checkpoint) cuts through are kept.
pub async fn apply_retention(
    store: &Store,
    signer: &Signer,
    cutoff_us: i64,
) -> Result<Retention, LogError> {
    let latest = publish_checkpoint(store, signer).await?;
    let size = store.audit_size().await?;
    let already = store.audit_pruned_before().await?;
    // Only a prefix of the log can go, and only what a checkpoint covers.
    let mut c = store
        .audit_first_index_since(cutoff_us)
        .await?
        .unwrap_or(size);
    c = c.min(latest.map_or(0, |l| l.size));
    if c <= already {
        return Ok(Retention {
            start: already,
            removed: 0,
        });
    }
    ensure_tiles(store, size).await?;
    let mut boundaries: Vec<u64> = store
        .audit_checkpoints()
        .await?
        .into_iter()
        .map(|cp| cp.size)
        .filter(|&s| s <= c && !s.is_multiple_of(TILE))
        .collect();
    if !c.is_multiple_of(TILE) {
        boundaries.push(c);
    }
    let mut keep = Vec::new();
    for b in boundaries {
        let lo = b / TILE * TILE;
        for (k, h) in full_leaves(store, already, lo, b)
            .await?
            .into_iter()
            .enumerate()
        {
            keep.push((lo + k as u64, h));
        }
    }
    keep.sort_unstable();
    keep.dedup();
    store.put_audit_pruned_leaves(&keep).await?;
    let removed = store.prune_audit_before(c, cutoff_us).await?;
    Ok(Retention { start: c, removed })
}
